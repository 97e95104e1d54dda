"""Bytes the server holds for each client past what libzmq queues for it (``--request-buffer``).

Requests answered at once hold nothing beyond their own message. Those answered later (spawns,
reads and queries of the output store, which wait for a process or a worker thread) hold their
request and the reply they may build until they are answered; a large reply holds its bytes
until libzmq has handed it to the kernel (a tracked send). A request that would take a client
over its budget is refused at once, with a reply saying ``busy`` and when to retry
(:func:`~descartes_fast.wire.texts.busy`), which descartes_fast clients wait out and retry.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Holdings", "LARGE_REPLY"]

#: replies of at least this many bytes are sent tracked and held until libzmq lets go of them
LARGE_REPLY = 64 << 10


class _Tracker(Protocol):
    @property
    def done(self) -> bool: ...


class Holdings:
    """Per client (a CURVE key, else a connection): the bytes held for it, against *limit*."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        self._held: dict[object, int] = {}
        self._sending: dict[object, list[tuple[_Tracker, int]]] = {}

    def held(self, client: object) -> int:
        """The bytes held for *client* now (large replies libzmq has sent no longer count)."""
        sending = self._sending.get(client)
        if sending:
            still = [(t, n) for t, n in sending if not t.done]
            if len(still) < len(sending):
                self.release(client, sum(n for t, n in sending if t.done))
            if still:
                self._sending[client] = still
            else:
                del self._sending[client]
        return self._held.get(client, 0)

    def take(self, client: object, size: int) -> int | None:
        """Hold *size* more bytes for *client*: None if taken, else the bytes it holds already (the
        request is refused). A client that holds nothing is always let in, however large the request."""
        held = self.held(client)
        if held and held + size > self.limit:
            self.refused += 1
            return held
        self._held[client] = held + size
        return None

    def release(self, client: object, size: int) -> None:
        left = self._held.get(client, 0) - size
        if left > 0:
            self._held[client] = left
        else:
            self._held.pop(client, None)

    def sending(self, client: object, tracker: _Tracker, size: int) -> None:
        """A reply of *size* bytes, held by this client's budget until *tracker* is done."""
        self._held[client] = self._held.get(client, 0) + size
        self._sending.setdefault(client, []).append((tracker, size))

    def total(self) -> int:
        """The bytes held for all clients (settling every tracked send: a client that has gone
        leaves nothing behind once libzmq has dropped its replies)."""
        for client in list(self._sending):
            self.held(client)
        return sum(self._held.values())
