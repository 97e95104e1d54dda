"""Who may send a request right now: the CURVE allowlist, and a rate limit per client.

The dispatcher calls :meth:`Gate.check` for every request, before decoding it, with what
libzmq knows of the sender: the ``User-Id`` the ZAP handler gave the connection (the
client's public key), its ``Peer-Address`` and the connection's routing id. From them comes
the client's *identity*, the name its agent count is kept under and its log lines name:

* ``key:NAME`` for a CURVE client (``NAME.key`` in the allowlist);
* ``ip:ADDRESS`` for a plain TCP client;
* ``local:UID`` for an ipc client (the peer's user id), ``local`` for inproc.

The rate limit is kept per CURVE key, and without CURVE per connection: two clients on one
machine (one address) do not share a budget. A request over the limit is answered, never
dropped: ``rate limited: ...; retry after N ms`` (:func:`~descartes_fast.wire.texts.rate_limited`),
which our clients wait out and retry by themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from time import monotonic as _monotonic

from descartes_fast.wire.texts import rate_limited

__all__ = ["Gate", "Refusal", "Throttle"]

log = logging.getLogger("descartes_fast.server.admission")

_MAX_TRACKED = 10_000  # identities kept at once; the idle ones go first
_NOTICE_EVERY = 1.0    # seconds between log lines about one identity


class Refusal(Exception):
    """Why a request is not served; *reply* says whether the sender gets an error reply."""

    def __init__(self, text: str, reply: bool) -> None:
        super().__init__(text)
        self.reply = reply


class Throttle:
    """When a repeated event is worth saying again: at most once per *interval* per key.

    A refused client retries every 100 ms, a flooding one far more often; this keeps the log
    (and refusal replies) to one per interval. At most ``_MAX_TRACKED`` keys are remembered.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._said: dict[Hashable, list] = {}  # key -> [when last said, times unsaid since]

    def due(self, key: Hashable) -> int | None:
        """None to stay quiet; otherwise how many times the event went unsaid since last said."""
        now = _monotonic()
        said = self._said.get(key)
        if said is None:
            if len(self._said) >= _MAX_TRACKED:
                self._said.clear()
            self._said[key] = [now, 0]
            return 0
        if now - said[0] >= self.interval:
            unsaid = said[1]
            said[0], said[1] = now, 0
            return unsaid
        said[1] += 1
        return None


class Gate:
    """Admission control for the request socket.

    Parameters
    ----------
    rate : requests per second allowed per identity (0 for no limit)
    burst : requests an idle identity may send at once (default: one second's worth)
    allowlist : returns the current public key -> name mapping when CURVE is on (None when off);
        a request whose key is no longer in it is dropped
    """

    def __init__(self, rate: float = 0.0, burst: float | None = None,
                 allowlist: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate, 1.0))
        self.allowlist = allowlist
        self.identity = "local"  # of the request last admitted (read by handlers)
        self.rate_limited = 0
        self.unauthorized = 0
        self._buckets: dict[str | bytes, list[float]] = {}  # key or connection -> [tokens, last refill]
        self._notices = Throttle(_NOTICE_EVERY)
        self._identities: dict[str | None, str] = {}  # Peer-Address -> identity
        self._drop = Refusal("dropped", reply=False)

    def check(self, user_id: str | None, peer: str | None, connection: bytes | None = None) -> Refusal | None:
        """None to serve the request; otherwise the refusal (counted). *connection*: the routing id
        of the request's connection (its rate limit's key when there is no CURVE key)."""
        if user_id:
            name = self.allowlist().get(user_id) if self.allowlist is not None else user_id
            if name is None:
                self.unauthorized += 1
                if self._notices.due("key:" + user_id) is not None:
                    log.warning("refused requests from key %s: it is no longer authorized", user_id)
                return self._drop
            identity = "key:" + name
        elif self.allowlist is not None:
            self.unauthorized += 1  # CURVE is on, so a connection without a user id is not ours
            return self._drop
        else:
            known = self._identities.get(peer)
            if known is None:
                if len(self._identities) >= _MAX_TRACKED:
                    self._identities.clear()
                known = self._identities[peer] = _peer_identity(peer)
            identity = known
        self.identity = identity
        if not self.rate:
            return None
        now = _monotonic()
        key = identity if user_id or connection is None else connection
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED:
                self._forget_idle(now)
            bucket = self._buckets[key] = [self.burst, now]
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = (tokens if tokens < self.burst else self.burst) - 1.0
            return None
        bucket[0] = tokens
        self.rate_limited += 1
        if self._notices.due(identity) is not None:
            log.warning("client %s is over the rate limit (%g requests/s): asking it to retry later", identity,
                        self.rate)
        wait_ms = max(1, int((1.0 - tokens) / self.rate * 1000 + 0.999))  # until its next token
        return Refusal(rate_limited(identity, self.rate, wait_ms), reply=True)

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled (their clients have been quiet)."""
        full = [k for k, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


def _peer_identity(peer: str | None) -> str:
    if not peer:
        return "local"
    if peer.startswith("localhost:"):  # ipc: "localhost:UID:GID:PID"
        return "local:" + peer.split(":")[1]
    return "ip:" + peer
