"""The agent server: a ROUTER socket for requests and a PUB socket for events.

Requests are drained from the ROUTER socket whenever it is readable, by the dispatcher twin
(compiled when available): no per-message future, no one-await-per-message receive. Replies
go out at once, except for spawns, which run as tasks so a slow spawn blocks nobody.
Log chunks and status updates go out on PUB as one frame each (PROTOCOL.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

import descartes_fast
from descartes_fast import _impl
from descartes_fast.backends import BackendRegistry
from descartes_fast.codec import get_implementation
from descartes_fast.control import Controller
from descartes_fast.errors import ProtocolError
from descartes_fast.frames import HEARTBEAT_TOPIC, log_topic, pub_frame, status_topic
from descartes_fast.schema import (
    MESSAGE_TYPES, PROTOCOL_VERSION, BatchControlCommand, CommandResponse,
    ControlCommand, CustomActionRequest, ErrorResponse, HealthCheckRequest, HealthCheckResponse,
    ListAgentsRequest, ListAgentsResponse, LogStreamMessage, LogStreamType, Message,
    OutputQueryRequest, OutputQueryResponse, SpawnRequest, SpawnResponse, StatusUpdate,
    StatusUpdateType)
from descartes_fast.supervisor import Agent, AgentLimitError, SpawnError, Supervisor

__all__ = ["ServerConfig", "AgentServer", "TRANSPORT_MAX_MESSAGE_SIZE"]

log = logging.getLogger("descartes_fast.server")

#: ZMQ_MAXMSGSIZE: libzmq drops the connection of a peer sending more. Between
#: MAX_MESSAGE_SIZE and this, the request is read and answered with an error reply.
TRANSPORT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
_NIL = uuid.UUID(int=0)


@dataclass
class ServerConfig:
    """Settings of one server (see ``descartes-fast-server --help``)."""

    bind: str = "tcp://127.0.0.1:5555"
    pub: str | None = "tcp://127.0.0.1:5556"
    server_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_agents: int = 100
    stop_grace: float = 5.0
    heartbeat_interval: float = 10.0
    output_limit: int = 8 * 1024 * 1024
    retention: float = 3600.0
    backends: BackendRegistry = field(default_factory=BackendRegistry)
    implementation: str = _impl.IMPLEMENTATION


class AgentServer:
    """Serve requests until :meth:`request_stop` (or SIGTERM/SIGINT under :meth:`run`)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.codec = get_implementation(config.implementation)
        self.supervisor = Supervisor(config.backends, max_agents=config.max_agents, stop_grace=config.stop_grace,
                                     output_limit=config.output_limit, retention=config.retention,
                                     listener=self)
        self.controller = Controller(self.supervisor, config.pub)
        self.started = time.monotonic()
        self.stats = {"spawned": 0, "spawn_failures": 0, "pub_dropped": 0}
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._pub = self._ctx.socket(zmq.PUB) if config.pub else None
        self._seq: dict[tuple[uuid.UUID, LogStreamType], int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopping: asyncio.Event | None = None
        self.endpoints: dict[str, str] = {}
        dispatch = _impl.load("dispatch", config.implementation)
        handlers: dict[type, Any] = {cls: self._unexpected for cls in MESSAGE_TYPES}
        c = self.controller
        handlers.update({
            SpawnRequest: self._spawn, ControlCommand: c.control, CustomActionRequest: c.custom_action,
            BatchControlCommand: c.batch, ListAgentsRequest: c.list_agents, OutputQueryRequest: c.output_query,
            HealthCheckRequest: lambda m, e: self.health(m.request_id),
        })
        self.dispatcher = dispatch.Dispatcher(self._router, handlers, self._bad_request)

    # -- lifecycle --

    def bind(self) -> None:
        """Bind both sockets (separately from serving, so tests can bind port 0)."""
        for sock in filter(None, (self._router, self._pub)):
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_MAX_MESSAGE_SIZE)
        self._router.setsockopt(zmq.RCVHWM, 100_000)
        self._router.setsockopt(zmq.SNDHWM, 100_000)
        self._router.bind(self.config.bind)
        self.endpoints["bind"] = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._pub is not None:
            self._pub.setsockopt(zmq.SNDHWM, 100_000)
            self._pub.bind(self.config.pub)
            self.endpoints["pub"] = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    async def serve(self) -> None:
        """Answer requests until :meth:`request_stop`; then stop agents and close."""
        if not self.endpoints:
            self.bind()
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        log.info("descartes_fast %s server %s: implementation=%s, requests on %s, events on %s, "
                 "max_agents=%d, backends: %s", descartes_fast.__version__, self.config.server_id,
                 self.config.implementation, self.endpoints["bind"], self.endpoints.get("pub", "(none)"),
                 self.config.max_agents, ", ".join(self.config.backends.names()))
        loop.add_reader(self._router.getsockopt(zmq.FD), self._on_readable)
        self._on_readable()  # requests may have queued before the reader was added
        heartbeat = asyncio.create_task(self._heartbeats())
        await self._stopping.wait()
        log.info("shutting down: no new requests; stopping agents (grace %.1f s)", self.config.stop_grace)
        loop.remove_reader(self._router.getsockopt(zmq.FD))
        heartbeat.cancel()
        await self.supervisor.shutdown()
        for task in list(self._tasks):
            await asyncio.wait([task], timeout=5)
        self._router.close()
        if self._pub is not None:
            self._pub.close()  # LINGER lets queued events flush
        self._ctx.term()
        log.info("stopped")

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def run(self) -> None:
        """serve(), stopping on SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.serve()

    # -- requests --

    def _on_readable(self) -> None:
        """Take what is queued; come back soon if more is (ZeroMQ's FD is edge-triggered)."""
        self.dispatcher.drain()
        if self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            asyncio.get_running_loop().call_soon(self._on_readable)

    def _reply_later(self, envelope: list, message: Message) -> None:
        if self._router.closed:
            return
        self.dispatcher.reply(envelope, message)
        # a send can consume the FD's edge: look for requests that arrived meanwhile
        if self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            asyncio.get_running_loop().call_soon(self._on_readable)

    def _spawn(self, msg: SpawnRequest, envelope: list) -> None:
        task = asyncio.get_running_loop().create_task(self._do_spawn(msg, envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def _do_spawn(self, msg: SpawnRequest, envelope: list) -> None:
        sid = self.config.server_id
        try:
            agent = await self.supervisor.spawn(msg.config)
        except AgentLimitError as exc:
            reply = SpawnResponse(msg.request_id, False, None, str(exc), sid)
        except SpawnError as exc:
            self.stats["spawn_failures"] += 1
            log.warning("spawn %s (%s) failed: %s", msg.request_id, msg.config.model_backend, exc)
            reply = SpawnResponse(msg.request_id, False, None, f"Failed to spawn agent: {exc}", sid)
        else:
            self.stats["spawned"] += 1
            log.info("spawned agent %s (%s, pid %d) for %s", agent.id, msg.config.model_backend, agent.pid,
                     msg.request_id)
            reply = SpawnResponse(msg.request_id, True, agent.info(), None, sid)
        self._reply_later(envelope, reply)

    def health(self, request_id: str) -> HealthCheckResponse:
        d = self.dispatcher
        metadata = {"server_id": self.config.server_id, "endpoint": self.config.bind,
                    "max_agents": str(self.config.max_agents), "implementation": self.config.implementation,
                    "version": descartes_fast.__version__, "requests": str(d.received),
                    "decode_errors": str(d.decode_errors), "bad_frames": str(d.bad_frames),
                    **{k: str(v) for k, v in self.stats.items()}}
        return HealthCheckResponse(request_id, True, PROTOCOL_VERSION, int(time.monotonic() - self.started),
                                   self.supervisor.active_count(), metadata)

    def _unexpected(self, msg: Message, envelope: list) -> ErrorResponse:
        return ErrorResponse(getattr(msg, "request_id", ""),
                             f"unexpected message type '{msg.TAG}': this server answers requests only")

    def _bad_request(self, payload: Any, exc: ProtocolError) -> Message:
        """The reply to a request that does not decode (PROTOCOL.md §3)."""
        request_id, agent_id = _salvage(payload)
        text = f"invalid request: {exc}"
        kind = getattr(exc, "message_type", None)
        log.info("refused a request (%s): %s", type(exc).__name__, exc)
        if kind == "SpawnRequest":
            return SpawnResponse(request_id, False, None, text, self.config.server_id)
        if kind in ("ControlCommand", "CustomActionRequest"):
            return CommandResponse(request_id, agent_id, False, None, None, text)
        if kind == "ListAgentsRequest":
            return ListAgentsResponse(request_id, False, [], text)
        if kind == "OutputQueryRequest":
            return OutputQueryResponse(request_id, agent_id, False, error=text)
        return ErrorResponse(request_id, text)

    # -- events (the supervisor's Listener) --

    def on_output(self, agent: Agent, stream: LogStreamType, data: bytes) -> None:
        if self._pub is None:
            return
        key = (agent.id, stream)
        seq = self._seq.get(key, 0)
        self._seq[key] = seq + 1
        message = LogStreamMessage(agent.id, stream, data, time.time_ns(), seq)
        self._publish(log_topic(agent.id), message)

    def on_status(self, agent: Agent, kind: StatusUpdateType, message: str | None) -> None:
        log.info("agent %s: %s (%s)", agent.id, agent.status, message)
        if self._pub is None:
            return
        data = {"pid": agent.pid, "exit_code": agent.exit_code,
                "pause_mode": agent.pause_mode.value if agent.pause_mode else None}
        self._publish(status_topic(agent.id),
                      StatusUpdate(agent.id, kind, agent.status, message, data, timestamp=time.time_ns()))

    def _publish(self, topic: bytes, message: Message) -> None:
        if self._pub is None or self._pub.closed:
            return
        try:
            self._pub.send(pub_frame(topic, self.codec.encode(message)), zmq.NOBLOCK)
        except zmq.Again:
            self.stats["pub_dropped"] += 1

    async def _heartbeats(self) -> None:
        while True:
            self._publish(HEARTBEAT_TOPIC, StatusUpdate(
                _NIL, StatusUpdateType.HEARTBEAT, None, self.config.server_id,
                {"active_agents": self.supervisor.active_count(),
                 "uptime_secs": int(time.monotonic() - self.started)}, timestamp=time.time_ns()))
            await asyncio.sleep(self.config.heartbeat_interval)


def _salvage(payload: Any) -> tuple[str, uuid.UUID]:
    """request_id and agent_id from an invalid request, where they can be read at all."""
    try:
        value = msgpack.unpackb(bytes(payload), raw=False, strict_map_key=False)
    except Exception:  # anything at all: this is best effort on bytes already known to be bad
        return "", _NIL
    fields: dict[str, Any] = {}
    if isinstance(value, list) and len(value) > 1:
        fields = {"request_id": value[1], "agent_id": value[2] if len(value) > 2 else None}
    elif isinstance(value, dict):
        fields = value
    request_id = fields.get("request_id")
    agent_id = fields.get("agent_id")
    return (request_id if isinstance(request_id, str) else "",
            uuid.UUID(bytes=agent_id) if isinstance(agent_id, bytes) and len(agent_id) == 16 else _NIL)

