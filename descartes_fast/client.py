"""Clients of a descartes_fast or Rust Descartes server: :class:`AsyncClient` and :class:`Client`.

The method names are those of the Rust ``ZmqAgentRunner`` trait (reference §5), without its
defects: many requests in flight on one DEALER socket, replies matched by ``request_id``
(a late reply after a timeout is dropped, never taken for the next call), typed errors with
the server's text, stdin sent as text or bytes (not base64), status and log subscriptions
that really subscribe, and an ``is_connected()`` that tells the truth (application-level
health checks; no ZMTP heartbeats, which Rust peers cannot parse). With ``server_key`` and
``client_key`` set, both sockets use CURVE (encrypted, and authenticated by the server's
allowlist); a server that does not know the key never answers, so calls time out.

The receive path does not pay ``zmq.asyncio``'s per-message cost: the socket's FD is watched
by the event loop, every queued reply is taken when it fires, and futures are resolved in
that one pass.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import math
import threading
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import zmq

from descartes_fast import _impl, codec
from descartes_fast.errors import ProtocolError
from descartes_fast.frames import log_topic, parse_pub_frame, status_topic
from descartes_fast.security import SecurityError, curve_client, load_public_key, load_secret_key
from descartes_fast.schema import (
    AgentConfig, AgentInfo, AgentStatus, BatchControlCommand, BatchControlResponse, CommandResponse,
    ControlCommand, ControlCommandType, CustomActionRequest, ErrorResponse, HealthCheckRequest,
    HealthCheckResponse, ListAgentsRequest, ListAgentsResponse, LogStreamMessage, Message,
    OutputQueryRequest, OutputQueryResponse, SpawnRequest, SpawnResponse, StatusUpdate,
    ZmqOutputStream)

__all__ = ["ZmqRunnerConfig", "AsyncClient", "Client", "ClientError", "NotConnectedError",
           "RequestTimeoutError", "ServerError", "UnexpectedReplyError"]

_R = TypeVar("_R", bound=Message)
_C = ControlCommandType


class ClientError(Exception):
    """Root of the client's errors."""


class NotConnectedError(ClientError):
    """No connection (``connect()`` not called, or ``disconnect()`` was)."""


class RequestTimeoutError(ClientError):
    """The server did not answer in time (the connection may be lost)."""


class ServerError(ClientError):
    """The server answered ``success = false`` or with ``error_response``; ``str()`` is its text."""

    def __init__(self, text: str, reply: Message | None = None) -> None:
        super().__init__(text)
        self.reply = reply


class UnexpectedReplyError(ClientError):
    """A reply of another type than the request calls for."""


@dataclass
class ZmqRunnerConfig:
    """The Rust ``ZmqRunnerConfig`` (reference §2.2), every field in use; times in seconds."""

    endpoint: str = "tcp://localhost:5555"
    connection_timeout_secs: float = 30.0
    request_timeout_secs: float = 30.0
    auto_reconnect: bool = True
    max_reconnect_attempts: int = 3
    reconnect_delay_secs: float = 5.0
    enable_heartbeat: bool = True
    heartbeat_interval_secs: float = 30.0
    server_id: str | None = None
    #: descartes_fast addition: the PUB endpoint; by default the server's ``stream_logs`` answer,
    #: with its host replaced by the request endpoint's
    pub_endpoint: str | None = None
    #: descartes_fast addition, for a CURVE server: its public key file (``NAME.key``) ...
    server_key: str | None = None
    #: ... and this client's secret key file (``NAME.key_secret``, from ``descartes-fast keygen``)
    client_key: str | None = None
    #: descartes_fast addition: events kept per subscription for a consumer that falls behind
    #: (the oldest go first, counted in ``dropped``)
    subscription_queue: int = 100_000


class _Subscription:
    """One consumer of PUB messages for a topic prefix."""

    def __init__(self, client: AsyncClient, topic: bytes, kind: type) -> None:
        self.client, self.topic, self.kind = client, topic, kind
        self.queue: asyncio.Queue = asyncio.Queue(client.config.subscription_queue)
        self.dropped = 0

    def offer(self, item: Any) -> None:
        """Queue *item*; when full, the oldest queued item makes room."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> Any:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self.client._unsubscribe(self)
        self.offer(None)


class _Follow:
    """Log chunks of one agent until its status turns terminal (then what is queued, then the end)."""

    def __init__(self, logs: _Subscription, events: _Subscription, ended: bool) -> None:
        self.logs, self.events, self.ended = logs, events, ended
        self._next_event: asyncio.Task | None = None

    def __aiter__(self) -> _Follow:
        return self

    async def __anext__(self) -> LogStreamMessage:
        while True:
            if not self.logs.queue.empty():
                item = self.logs.queue.get_nowait()
                if item is None:
                    raise StopAsyncIteration
                return item
            if self.ended:
                await self.aclose()
                raise StopAsyncIteration
            if self._next_event is None:
                self._next_event = asyncio.ensure_future(self.events.__anext__())
            next_log = asyncio.ensure_future(self.logs.queue.get())
            done, _ = await asyncio.wait({next_log, self._next_event}, return_when=asyncio.FIRST_COMPLETED)
            if next_log in done:
                item = next_log.result()
                if item is None:
                    raise StopAsyncIteration
                return item
            next_log.cancel()
            update = self._next_event.result()
            self._next_event = None
            if update.status in _TERMINAL:
                self.ended = True
                await asyncio.sleep(0.05)  # output published just before the end is still in flight

    async def aclose(self) -> None:
        if self._next_event is not None:
            self._next_event.cancel()
        await self.logs.aclose()
        await self.events.aclose()


_TERMINAL = (AgentStatus.COMPLETED, AgentStatus.FAILED, AgentStatus.TERMINATED)


class AsyncClient:
    """An asyncio client; see the module docstring. Use ``async with AsyncClient(config):``."""

    def __init__(self, config: ZmqRunnerConfig | None = None, **overrides: Any) -> None:
        # a copy: the caller's config is not changed (and unknown names raise TypeError)
        self.config = dataclasses.replace(config or ZmqRunnerConfig(), **overrides)
        self._curve = _curve_keys(self.config)
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._io: Any = None  # the Requester twin on _sock
        self._sub: zmq.Socket | None = None
        self._pending: dict[str, tuple[asyncio.Future, asyncio.TimerHandle]] = {}
        self._subs: dict[bytes, list[_Subscription]] = collections.defaultdict(list)
        self._connected = False
        self._endpoint: str | None = None
        self._heartbeat: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = _request_ids()
        self._check_soon = False  # a readability check is scheduled (see _request)

    # -- connection --

    async def connect(self, endpoint: str | None = None, timeout: float | None = None) -> None:
        """Connect and check that the server answers (``HealthCheckRequest``) within *timeout*."""
        await self.disconnect()
        self._loop = asyncio.get_running_loop()
        self._endpoint = endpoint or self.config.endpoint
        self._open()
        try:
            await self._request(HealthCheckRequest(next(self._ids)), HealthCheckResponse,
                                timeout or self.config.connection_timeout_secs)
        except RequestTimeoutError:
            self._close_socket()
            raise RequestTimeoutError(f"no answer from {self._endpoint} within "
                                      f"{timeout or self.config.connection_timeout_secs} s") from None
        self._connected = True
        if self.config.enable_heartbeat:
            self._heartbeat = self._loop.create_task(self._heartbeats())

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)  # bounded, and far above what we have in flight
        sock.setsockopt(zmq.SNDHWM, 10_000)  # past this, _request waits (without blocking the loop)
        if self._curve:
            curve_client(sock, *self._curve)
        sock.connect(self._endpoint)
        self._sock = sock
        self._io = _impl.load("dispatch", _impl.IMPLEMENTATION).Requester(sock, self._on_reply)
        self._loop.add_reader(sock.getsockopt(zmq.FD), self._on_readable)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
            self._sock.close(0)
            self._sock = None

    async def disconnect(self) -> None:
        """Close the sockets; pending requests fail with NotConnectedError; subscriptions end."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._close_socket()
        if self._sub is not None:
            self._loop.remove_reader(self._sub.getsockopt(zmq.FD))
            self._sub.close(0)
            self._sub = None
        for subs in self._subs.values():
            for sub in subs:
                sub.offer(None)
        self._subs.clear()
        for future, timer in self._pending.values():
            timer.cancel()
            if not future.done():
                future.set_exception(NotConnectedError("disconnected"))
        self._pending.clear()
        self._connected = False

    def is_connected(self) -> bool:
        """True while the server answers (the last health check or request got a reply)."""
        return self._connected

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def _heartbeats(self) -> None:
        """Health checks every heartbeat interval; reconnect (if configured) when they fail."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_secs)
            try:
                await self._request(HealthCheckRequest(next(self._ids)), HealthCheckResponse,
                                    min(self.config.request_timeout_secs, self.config.heartbeat_interval_secs))
                self._connected = True
            except RequestTimeoutError:
                self._connected = False
                if self.config.auto_reconnect:
                    await self._reconnect()

    async def _reconnect(self) -> None:
        for _ in range(max(1, self.config.max_reconnect_attempts)):
            self._close_socket()
            self._open()  # a new DEALER: nothing stale queued in the old one
            try:
                await self._request(HealthCheckRequest(next(self._ids)), HealthCheckResponse,
                                    self.config.connection_timeout_secs)
            except RequestTimeoutError:
                await asyncio.sleep(self.config.reconnect_delay_secs)
                continue
            self._connected = True
            return

    # -- requests --

    def _on_readable(self) -> None:
        """Take every queued reply (the twin's Requester) and resolve the callers' futures."""
        self._check_soon = False
        sock = self._sock
        if sock is None:
            return
        self._io.drain()
        # ZeroMQ's FD is edge-triggered: make sure nothing arrived while we read
        if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._loop.call_soon(self._on_readable)

    def _on_reply(self, reply: Message) -> None:
        entry = self._pending.pop(getattr(reply, "request_id", None), None)
        if entry is not None and not entry[0].done():
            entry[1].cancel()
            entry[0].set_result(reply)
        # else: a late reply to a request that timed out, or not ours: dropped

    def _expire(self, rid: str, message: Message, timeout: float) -> None:
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(RequestTimeoutError(f"no reply to {message.TAG} {rid} within {timeout} s"))

    async def _request(self, message: Message, expected: type[_R], timeout: float | None = None) -> _R:
        if self._sock is None:
            raise NotConnectedError("not connected: call connect() first")
        rid = message.request_id
        timeout = timeout or self.config.request_timeout_secs
        payload = codec.encode(message)
        deadline = self._loop.time() + timeout
        while True:
            try:
                self._io.send(payload)
                break
            except zmq.Again:  # the send queue is full: wait for it to drain, up to the timeout
                if self._loop.time() >= deadline:
                    raise RequestTimeoutError(f"could not send {message.TAG} {rid} within {timeout} s: the "
                                              f"send queue to {self._endpoint} stayed full") from None
                await asyncio.sleep(0.001)
        future = self._loop.create_future()
        self._pending[rid] = (future, self._loop.call_later(timeout, self._expire, rid, message, timeout))
        if not self._check_soon:  # a send can consume the FD's edge: look once this loop turn
            self._check_soon = True
            self._loop.call_soon(self._on_readable)
        reply = await future
        self._connected = True
        if isinstance(reply, ErrorResponse):
            raise ServerError(reply.error, reply)
        if not isinstance(reply, expected):
            raise UnexpectedReplyError(f"expected {expected.TAG} to {message.TAG} {rid}, got {reply.TAG}")
        return reply

    async def _command(self, agent_id: uuid.UUID, kind: ControlCommandType, payload: Any = None) -> CommandResponse:
        reply = await self._request(ControlCommand(next(self._ids), agent_id, kind, payload), CommandResponse)
        if not reply.success:
            raise ServerError(reply.error or "Command failed", reply)
        return reply

    # -- the ZmqAgentRunner methods --

    async def spawn_remote(self, config: AgentConfig, timeout_secs: float | None = None) -> AgentInfo:
        """Start an agent. *timeout_secs* is the request's field: a descartes_fast server ends the
        agent (``failed``) after that much wall-clock time (the Rust server ignores it). Unlike the
        Rust client, this does not wait that long for the reply: ``request_timeout_secs`` applies."""
        limit = math.ceil(timeout_secs) if timeout_secs else None
        reply = await self._request(SpawnRequest(next(self._ids), config, limit), SpawnResponse)
        if not reply.success or reply.agent_info is None:
            raise ServerError(reply.error or "Spawn failed", reply)
        return reply.agent_info

    async def list_remote_agents(self, filter_status: AgentStatus | None = None,
                                 limit: int | None = None) -> list[AgentInfo]:
        reply = await self._request(ListAgentsRequest(next(self._ids), filter_status, limit), ListAgentsResponse)
        if not reply.success:
            raise ServerError(reply.error or "List agents failed", reply)
        return reply.agents

    async def get_remote_agent(self, agent_id: uuid.UUID) -> AgentInfo | None:
        """The agent's info, or None if the server does not know it."""
        for info in await self.list_remote_agents():
            if info.id == agent_id:
                return info
        return None

    async def get_agent_status(self, agent_id: uuid.UUID) -> AgentStatus:
        reply = await self._command(agent_id, _C.GET_STATUS)
        if reply.status is None:
            raise ServerError("No status in response", reply)
        return reply.status

    async def pause_agent(self, agent_id: uuid.UUID, force: bool = False) -> str:
        """Pause; returns the mode the server used (``"cooperative"`` or ``"forced"``)."""
        reply = await self._command(agent_id, _C.PAUSE, {"force": True} if force else None)
        return (reply.data or {}).get("mode", "forced" if force else "cooperative")

    async def resume_agent(self, agent_id: uuid.UUID) -> None:
        await self._command(agent_id, _C.RESUME)

    async def stop_agent(self, agent_id: uuid.UUID) -> None:
        await self._command(agent_id, _C.STOP)

    async def kill_agent(self, agent_id: uuid.UUID) -> None:
        await self._command(agent_id, _C.KILL)

    async def write_agent_stdin(self, agent_id: uuid.UUID, data: bytes | str, eof: bool = False) -> int:
        """Write to the agent's stdin (text as is, bytes as an int array); returns bytes written."""
        if isinstance(data, bytes):
            try:
                payload: Any = data.decode("utf-8")
            except UnicodeDecodeError:
                payload = list(data)
        else:
            payload = data
        reply = await self._command(agent_id, _C.WRITE_STDIN, {"data": payload, "eof": eof} if eof else {"data": payload})
        return (reply.data or {}).get("bytes_written", 0)

    async def read_agent_stdout(self, agent_id: uuid.UUID) -> bytes | None:
        """The next unread line of stdout, or None."""
        return _read_data(await self._command(agent_id, _C.READ_STDOUT))

    async def read_agent_stderr(self, agent_id: uuid.UUID) -> bytes | None:
        return _read_data(await self._command(agent_id, _C.READ_STDERR))

    async def health_check(self) -> HealthCheckResponse:
        return await self._request(HealthCheckRequest(next(self._ids)), HealthCheckResponse)

    async def send_action_to_agent(self, agent_id: uuid.UUID, action: str, params: Any = None,
                                   timeout_secs: float | None = None) -> Any:
        reply = await self._request(CustomActionRequest(next(self._ids), agent_id, action, params,
                                                        int(timeout_secs) if timeout_secs else None),
                                    CommandResponse, timeout_secs)
        if not reply.success:
            raise ServerError(reply.error or "Custom action failed", reply)
        return reply.data

    async def query_agent_output(self, agent_id: uuid.UUID, stream: ZmqOutputStream = ZmqOutputStream.BOTH,
                                 filter: str | None = None, limit: int | None = None,
                                 offset: int | None = None) -> OutputQueryResponse:
        reply = await self._request(OutputQueryRequest(next(self._ids), agent_id, stream, filter, limit, offset),
                                    OutputQueryResponse)
        if not reply.success:
            raise ServerError(reply.error or "Output query failed", reply)
        return reply

    async def batch_control(self, agent_ids: list[uuid.UUID], command_type: ControlCommandType,
                            payload: Any = None, fail_fast: bool = False) -> BatchControlResponse:
        return await self._request(BatchControlCommand(next(self._ids), list(agent_ids), command_type, payload, fail_fast),
                                   BatchControlResponse, 2 * self.config.request_timeout_secs)

    # -- subscriptions --

    async def subscribe_status_updates(self, agent_id: uuid.UUID | None = None) -> AsyncIterator[StatusUpdate]:
        """Status updates of one agent (or of all, heartbeats included) as they are published."""
        topic = status_topic(agent_id) if agent_id is not None else b"status."
        return await self._subscribe(topic, StatusUpdate, agent_id)

    async def stream_logs(self, agent_id: uuid.UUID) -> AsyncIterator[LogStreamMessage]:
        """The agent's log chunks as they are published (``sequence`` counts per stream)."""
        return await self._subscribe(log_topic(agent_id), LogStreamMessage, agent_id)

    async def follow_logs(self, agent_id: uuid.UUID) -> AsyncIterator[LogStreamMessage]:
        """Like :meth:`stream_logs`, but the iteration ends once the agent has ended."""
        logs = await self.stream_logs(agent_id)
        events = await self.subscribe_status_updates(agent_id)
        return _Follow(logs, events, await self.get_agent_status(agent_id) in _TERMINAL)

    async def _subscribe(self, topic: bytes, kind: type, agent_id: uuid.UUID | None) -> _Subscription:
        if self._sub is None:
            self._sub = self._ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, 100_000)
            if self._curve:
                curve_client(self._sub, *self._curve)
            self._sub.connect(await self._pub_endpoint(agent_id))
            self._loop.add_reader(self._sub.getsockopt(zmq.FD), self._on_event)
        sub = _Subscription(self, topic, kind)
        if not self._subs[topic]:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._subs[topic].append(sub)
        await asyncio.sleep(0.1)  # a new subscription takes a moment to reach the publisher
        return sub

    async def _pub_endpoint(self, agent_id: uuid.UUID | None) -> str:
        if self.config.pub_endpoint:
            return self.config.pub_endpoint
        if agent_id is not None:
            data = (await self._command(agent_id, _C.STREAM_LOGS)).data or {}
            if data.get("pub_endpoint"):
                return _same_host(data["pub_endpoint"], self._endpoint)
        parts = urlsplit(self._endpoint)  # the convention: events on the next port
        return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{(parts.port or 5555) + 1}"))

    def _unsubscribe(self, sub: _Subscription) -> None:
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
            if not subs and self._sub is not None:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, sub.topic)

    def _on_event(self) -> None:
        sock = self._sub
        while sock is not None and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frame = sock.recv(zmq.NOBLOCK)
            try:
                topic, payload = parse_pub_frame(frame)
                message = codec.decode(payload)
            except ProtocolError:
                continue
            for prefix, subs in self._subs.items():
                if topic.startswith(prefix):
                    for sub in subs:
                        if isinstance(message, sub.kind):
                            sub.offer(message)


def _request_ids() -> Iterator[str]:
    """Request ids: unique per client (a random prefix) and cheap (a counter)."""
    prefix = uuid.uuid4().hex[:12]
    n = 0
    while True:
        n += 1
        yield f"{prefix}-{n}"


def _read_data(reply: CommandResponse) -> bytes | None:
    data = reply.data or {}
    if data.get("raw") is not None:
        return bytes(data["raw"])
    text = data.get("data")
    return text.encode() if isinstance(text, str) else None


def _same_host(pub: str, request_endpoint: str) -> str:
    """The server reports its bind string (``tcp://0.0.0.0:5556``): reach it on the host we use."""
    parts, ours = urlsplit(pub), urlsplit(request_endpoint)
    if parts.scheme == "tcp" and parts.hostname in ("0.0.0.0", "*", "::") and ours.hostname:
        return urlunsplit(parts._replace(netloc=f"{ours.hostname}:{parts.port}"))
    return pub


class Client:
    """The same API, synchronous: for scripts and non-async code; safe from several threads.

    It runs an :class:`AsyncClient` on an event loop in a background thread.
    """

    def __init__(self, config: ZmqRunnerConfig | None = None, **overrides: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="descartes-fast-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(config, **overrides)
        self.config = self._async.config

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def connect(self, endpoint: str | None = None, timeout: float | None = None) -> None:
        self._run(self._async.connect(endpoint, timeout))

    def disconnect(self) -> None:
        self._run(self._async.disconnect())

    def close(self) -> None:
        """Disconnect and stop the background thread."""
        self.disconnect()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def is_connected(self) -> bool:
        return self._async.is_connected()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = self._run(getattr(self._async, name)(*args, **kwargs))
        if isinstance(result, (_Subscription, _Follow)):
            return self._iterate(result)  # an async iterator becomes a plain one
        return result

    def _iterate(self, sub: _Subscription | _Follow) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(sub.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(sub.aclose())


def _sync_method(name: str) -> Any:
    source = getattr(AsyncClient, name)

    def method(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = source.__doc__
    method.__signature__ = inspect.signature(source)  # type: ignore[attr-defined]
    return method


# Client gets every public coroutine method of AsyncClient, same signature and docstring.
for _name, _member in vars(AsyncClient).items():
    if not _name.startswith("_") and inspect.iscoroutinefunction(_member) and not hasattr(Client, _name):
        setattr(Client, _name, _sync_method(_name))


def _curve_keys(config: ZmqRunnerConfig) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) when CURVE is configured; raises SecurityError."""
    if config.server_key is None and config.client_key is None:
        return None
    if config.server_key is None or config.client_key is None:
        raise SecurityError("CURVE needs both server_key (the server's NAME.key) and client_key (this "
                            "client's NAME.key_secret)")
    return (load_public_key(config.server_key), *load_secret_key(config.client_key))
