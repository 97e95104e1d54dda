"""The server's event socket (XPUB): agents' log chunks and status updates as they happen, and heartbeats.

Every message is one frame, ``topic + b"\\x00" + msgpack`` (docs/protocol.md §5): log chunks on the
agent's UUID with a ``sequence`` counting per agent and stream from 0 (the chunk's number in the
output store, so a follower can refill what it missed), and the same chunks in the bin form on
``logb.<uuid>`` for descartes_fast clients (each form only while someone subscribes to it), status
updates on ``status.<uuid>``, heartbeats about the nil UUID. Subscribers are plain SUB sockets
(XPUB is PUB on the wire). Each subscriber has a queue of ``--pub-buffer`` bytes (as many of the
largest events as fit). An event that finds a subscriber's queue full is dropped for that
subscriber only, as are the events after it until the subscriber has caught up (libzmq takes the
queue out of the fan-out until then); each such overflow is counted in ``pub_overflows``, where
libzmq's PUB would say nothing. descartes_fast followers see the gap in the sequence numbers and
refill it from the output store. The server never waits."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from descartes_fast.agents.supervisor import Agent
from descartes_fast.server.memory import release_freed

if TYPE_CHECKING:
    from descartes_fast.server.metrics import Metrics  # (imported only with --metrics)
from descartes_fast.wire.constants import MAX_MESSAGE_SIZE
from descartes_fast.wire.frames import HEARTBEAT_TOPIC, log_topic, pub_frame, status_topic
from descartes_fast.wire.logchunks import BIN_PREFIX, bin_topic, chunk_frame
from descartes_fast.wire.schema import LogStreamMessage, LogStreamType, Message, StatusUpdate, StatusUpdateType

__all__ = ["EventPublisher", "NIL"]

log = logging.getLogger("descartes_fast.server")

#: the agent id of server heartbeats
NIL = uuid.UUID(int=0)
#: how often at most an event nobody subscribes to has the subscriptions read before it is given up
_LOOK_NS = 1_000_000


class EventPublisher:
    """The PUB socket, and the supervisor's :class:`~descartes_fast.agents.supervisor.Listener`.

    *encode* is the codec twin's encoder; *stats* the server's counters (``pub_overflows`` is
    counted here). Without an endpoint nothing is published, but status changes are still logged.
    """

    def __init__(self, sock: zmq.Socket | None, encode: Callable[[Message], bytes], stats: dict[str, int]) -> None:
        self.sock = sock
        self._encode = encode
        self._stats = stats
        self.endpoint: str | None = None
        #: topic prefixes someone subscribes to (XPUB tells the first subscribe and the last unsubscribe)
        self.topics: set[bytes] = set()
        self._wanted: dict[bytes, bool] = {}  # log topic -> whether a prefix in topics matches it (cleared on change)
        self._left = False  # a subscription has ended since the last heartbeat
        self._topics: dict[uuid.UUID, tuple[bytes, bytes, bytes]] = {}  # agent id -> its topics (see _topics_of)
        self._looked_ns = 0  # when _wants last read the subscriptions (time.monotonic_ns)
        #: the server's metrics (--metrics), told of restarts and session usage; None when off
        self.metrics: Metrics | None = None

    def bind(self, endpoint: str, hwm: int) -> str:
        """Bind the socket; returns the endpoint bound (a port 0 resolved)."""
        assert self.sock is not None
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue says so (zmq.Again) instead of dropping unseen
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def rebind(self) -> None:
        """Unbind and bind again: every subscription ends (good subscribers reconnect by themselves)."""
        if self.sock is not None and self.endpoint is not None:
            self.sock.unbind(self.endpoint)
            self.sock.bind(self.endpoint)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # LINGER lets queued events flush

    # -- the supervisor's Listener --

    def on_output(self, agent: Agent, stream: LogStreamType, data: bytes, sequence: int) -> None:
        """A chunk the output store has just stored as number *sequence* of its stream: published
        in each form someone subscribes to (the Rust form on the agent's UUID, the bin form on
        ``logb.<uuid>``, :mod:`~descartes_fast.wire.logchunks`); in none, neither encoded nor sent
        (counted in ``log_chunks_unsent``; the store has it for whoever asks later)."""
        if self.sock is None:
            return
        rust, _, binary = self._topics_of(agent.id)
        in_rust = self._wants(rust)
        in_bin = self._is_wanted(binary)  # (_wants has just read the subscriptions if it could)
        if not (in_rust or in_bin):
            self._stats["log_chunks_unsent"] += 1
            return
        now = time.time_ns()
        if in_rust:
            self.publish(rust, LogStreamMessage(agent.id, stream, data, now, sequence))
            self._stats["log_chunks_rust_form"] += 1
        if in_bin:
            self._send(chunk_frame(binary, agent.id, stream, data, now, sequence))
            self._stats["log_chunks_bin_form"] += 1

    def _topics_of(self, agent_id: uuid.UUID) -> tuple[bytes, bytes, bytes]:
        """The topics of the agent's log chunks in the Rust form, of its status updates and of its
        log chunks in the bin form (made once)."""
        topics = self._topics.get(agent_id)
        if topics is None:
            if len(self._topics) >= 4096:  # (agents long gone)
                self._topics.clear()
            topics = self._topics[agent_id] = (log_topic(agent_id), status_topic(agent_id), bin_topic(agent_id))
        return topics

    def _wants(self, topic: bytes) -> bool:
        """Whether a subscription matches *topic* (where libzmq would send it). Before a no,
        subscriptions that have come are read, once per millisecond at most (the socket's FD
        does not tell of those that came while it was sending, and reading costs microseconds)."""
        if self._is_wanted(topic):
            return True
        now = time.monotonic_ns()
        if now - self._looked_ns < _LOOK_NS:
            return False
        self._looked_ns = now
        self.take_subscriptions()
        return self._is_wanted(topic)

    def _is_wanted(self, topic: bytes) -> bool:
        """Whether a subscription matches *topic*; for the bin form, one that names its family
        (``logb.`` or more: a subscriber to everything, ``""``, is not asked to decode two forms)."""
        wanted = self._wanted.get(topic)
        if wanted is None:
            if len(self._wanted) >= 4096:  # (topics of agents long gone)
                self._wanted.clear()
            least = len(BIN_PREFIX) if topic.startswith(BIN_PREFIX) else 0
            wanted = self._wanted[topic] = any(topic.startswith(prefix) and len(prefix) >= least
                                               for prefix in self.topics)
        return wanted

    def on_status(self, agent: Agent, kind: StatusUpdateType, message: str | None,
                  event: dict[str, Any] | None = None) -> None:
        """A status update; *event*: what the agent's session said (its data, merged in). Logged
        at INFO, but a tool call at DEBUG (a busy session makes hundreds a minute); published
        if someone subscribes to its topic, else only counted (``status_updates_unsent``)."""
        level = logging.DEBUG if event is not None and event.get("event") == "tool_call" else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "agent %s: %s (%s)", agent.id, agent.status, message)
        if event is not None and self.metrics is not None:
            self._count(agent.config.model_backend, event)
        if self.sock is None:
            return
        topic = self._topics_of(agent.id)[1]
        if not self._wants(topic):  # (nobody would get it: libzmq sends nothing nobody subscribes to)
            self._stats["status_updates_unsent"] += 1
            return
        data = {**agent.ending(), "pause_mode": agent.pause_mode.value if agent.pause_mode else None,
                **(event or {})}
        self.publish(topic, StatusUpdate(agent.id, kind, agent.status, message, data, timestamp=time.time_ns()))

    def _count(self, backend: str, event: dict[str, Any]) -> None:
        """Restarts, tokens and cost for the metrics (--metrics)."""
        assert self.metrics is not None
        if event.get("event") == "restarting":
            self.metrics.restarted(backend)
        usage = event.get("turn_usage")
        if isinstance(usage, dict):
            self.metrics.session_usage(backend, usage["input_tokens"], usage["output_tokens"],
                                       usage["cached_input_tokens"], usage.get("cost_usd", 0.0))

    def publish(self, topic: bytes, message: Message) -> None:
        if self.sock is not None and not self.sock.closed:
            self._send(pub_frame(topic, self._encode(message)))

    def _send(self, frame: bytes) -> None:
        if self.sock is None or self.sock.closed:
            return
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # a subscriber's queue is full: it loses this (and more) events, the others get it
            self._stats["pub_overflows"] += 1
            self.sock.setsockopt(zmq.XPUB_NODROP, 0)
            try:
                self.sock.send(frame, zmq.NOBLOCK)
            finally:
                self.sock.setsockopt(zmq.XPUB_NODROP, 1)

    def take_subscriptions(self) -> None:
        """Read what XPUB says about subscriptions (on its FD becoming readable, and with every
        heartbeat: the FD is edge-triggered), so that those messages never pile up."""
        sock = self.sock
        if sock is None or sock.closed:
            return
        while int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            note: bytes = sock.recv(zmq.NOBLOCK)
            if note[:1] == b"\x01":
                self.topics.add(note[1:])
                self._wanted.clear()
            elif note[:1] == b"\x00":
                self.topics.discard(note[1:])
                self._wanted.clear()
                self._left = True

    async def heartbeats(self, server_id: str, interval: float, facts: Callable[[], dict[str, Any]]) -> None:
        """A heartbeat every *interval* seconds, carrying *facts()* as its data (until cancelled)."""
        while True:
            self.take_subscriptions()
            if self._left:  # what libzmq queued for a subscriber that has gone is freed by now
                self._left = False
                release_freed()
            self.publish(HEARTBEAT_TOPIC, StatusUpdate(NIL, StatusUpdateType.HEARTBEAT, None, server_id, facts(),
                                                       timestamp=time.time_ns()))
            await asyncio.sleep(interval)
