"""The asyncio client of a descartes_fast or Rust Descartes server: :class:`AsyncClient`.

The method names are those of the Rust ``ZmqAgentRunner`` trait (docs/protocol.md §8), without its
defects: many requests in flight on one DEALER socket, replies matched by ``request_id``
(a late reply after a timeout is dropped, never taken for the next call), typed errors with
the server's text, stdin sent as text or bytes (not base64), status and log subscriptions
that really subscribe (:mod:`.subscriptions`), and an ``is_connected()`` that tells the truth
(application-level health checks; no ZMTP heartbeats, which Rust peers cannot parse). With
``server_key`` and ``client_key`` set, both sockets use CURVE (encrypted, and authenticated by
the server's allowlist); a server that does not know the key never answers, so calls time out.

The receive path does not pay ``zmq.asyncio``'s per-message cost: the socket's FD is watched
by the event loop, every queued reply is taken when it fires, and futures are resolved in
that one pass.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import zmq

from descartes_fast import _impl
from descartes_fast.client.config import ZmqRunnerConfig, curve_keys
from descartes_fast.client.errors import NotConnectedError, RequestTimeoutError, ServerError, UnexpectedReplyError
from descartes_fast.client.follow import Replay, Start
from descartes_fast.client.subscriptions import Follow, Subscription
from descartes_fast.wire import codec
from descartes_fast.wire.curve import curve_client
from descartes_fast.wire.errors import ProtocolError
from descartes_fast.wire.frames import log_topic, parse_pub_frame, status_topic
from descartes_fast.wire.logchunks import BIN_PREFIX, bin_topic, decode_chunk
from descartes_fast.wire.readiness import has_input
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentInfo,
    AgentStatus,
    BatchAgentResult,
    BatchControlCommand,
    BatchControlResponse,
    CommandResponse,
    ControlCommand,
    ControlCommandType,
    CustomActionRequest,
    ErrorResponse,
    HealthCheckRequest,
    HealthCheckResponse,
    ListAgentsRequest,
    ListAgentsResponse,
    LogStreamMessage,
    LogStreamType,
    Message,
    OutputQueryRequest,
    OutputQueryResponse,
    OutputReadRequest,
    OutputReadResponse,
    SpawnRequest,
    SpawnResponse,
    StatusUpdate,
    ZmqOutputStream,
)
from descartes_fast.wire.texts import REPLY_TOO_LARGE, retry_after

__all__ = ["AsyncClient"]

log = logging.getLogger("descartes_fast.client")

_R = TypeVar("_R", bound=Message)
_M = TypeVar("_M", bound=Message)
_C = ControlCommandType
#: seconds a follow waits without news before it asks for the agent's status: a descartes_fast
#: server publishes the end, a Rust one never does
_POLL_OURS = 5.0
_POLL_OTHERS = 1.0
#: the time PUB frames are decoded for in one turn of the loop, at most (and one more frame; see _on_event)
_EVENT_SECS_PER_TURN = 0.005
_LOG_STREAMS = {ZmqOutputStream.STDOUT: (LogStreamType.STDOUT,), ZmqOutputStream.STDERR: (LogStreamType.STDERR,),
                ZmqOutputStream.BOTH: (LogStreamType.STDOUT, LogStreamType.STDERR)}


class AsyncClient:
    """An asyncio client; see the module docstring. Use ``async with AsyncClient(config):``."""

    def __init__(self, config: ZmqRunnerConfig | None = None, *, context: zmq.Context | None = None,
                 **overrides: Any) -> None:
        """*config* with *overrides* (field names of :class:`ZmqRunnerConfig`); *context*: the
        ZeroMQ context its sockets are made in (default: pyzmq's shared one), e.g. one with more
        I/O threads, or whose I/O threads run in another network namespace."""
        # a copy: the caller's config is not changed (and unknown names raise TypeError)
        self.config = dataclasses.replace(config or ZmqRunnerConfig(), **overrides)
        self._curve = curve_keys(self.config)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = context if context is not None else zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._io: Any = None  # the Requester twin on _sock
        self._sub: zmq.Socket | None = None
        self._pending: dict[str, tuple[asyncio.Future[Message], asyncio.TimerHandle]] = {}
        self._subs: dict[bytes, list[Subscription[Any]]] = collections.defaultdict(list)
        self._connected = False
        self._endpoint = self.config.endpoint
        self._heartbeat: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop  # set by connect()
        self._ids = _request_ids()
        self._check_soon = False  # a readability check is scheduled (see _request)
        self.rate_limited = 0  # requests the server asked to retry later, and that were
        #: the server's metadata from the health check at connect (None before)
        self.server_metadata: dict[str, str] | None = None
        self._said: set[str] = set()  # notes already logged once

    # -- connection --

    async def connect(self, endpoint: str | None = None, timeout: float | None = None) -> None:
        """Connect and check that the server answers (``HealthCheckRequest``) within *timeout*."""
        await self.disconnect()
        self._loop = asyncio.get_running_loop()
        self._endpoint = endpoint or self.config.endpoint
        self._open()
        try:
            health = await self._request(HealthCheckRequest(next(self._ids)), HealthCheckResponse,
                                         timeout or self.config.connection_timeout_secs)
        except RequestTimeoutError:
            self._close_socket()
            raise RequestTimeoutError(f"no answer from {self._endpoint} within "
                                      f"{timeout or self.config.connection_timeout_secs} s") from None
        self.server_metadata = dict(health.metadata or {})
        self._connected = True
        if self.config.enable_heartbeat:
            self._heartbeat = self._loop.create_task(self._heartbeats())

    @property
    def descartes_fast_server(self) -> bool:
        """Whether the server is a descartes_fast one (it answers every request type), as opposed to a
        Rust Descartes server (spawn, control, list and health only; no status updates)."""
        metadata = self.server_metadata or {}
        return "descartes_fast" in metadata or ("implementation" in metadata and "version" in metadata)

    def _note_once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("%s", text)

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
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close(0)
            self._sock = None

    async def disconnect(self) -> None:
        """Close the sockets; pending requests fail with NotConnectedError; subscriptions end."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self._close_socket()
        if self._sub is not None:
            self._loop.remove_reader(self._sub.fileno())
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
        if has_input(sock):
            self._loop.call_soon(self._on_readable)

    def _on_reply(self, reply: Message) -> None:
        entry = self._pending.pop(getattr(reply, "request_id", ""), None)
        if entry is not None and not entry[0].done():
            entry[1].cancel()
            entry[0].set_result(reply)
        # else: a late reply to a request that timed out, or not ours: dropped

    def _expire(self, rid: str, message: Message, timeout: float) -> None:
        entry = self._pending.pop(rid, None)
        if entry is not None and not entry[0].done():
            self._connected = False  # until the next reply says otherwise
            entry[0].set_exception(RequestTimeoutError(f"no reply to {message.TAG} {rid} within {timeout} s"))

    async def _request(self, message: Message, expected: type[_R], timeout: float | None = None) -> _R:
        if self._sock is None:
            raise NotConnectedError("not connected: call connect() first")
        rid: str = message.request_id  # type: ignore[attr-defined]  # every request has one
        timeout = timeout or self.config.request_timeout_secs
        payload = codec.encode(message)
        deadline = self._loop.time() + timeout
        while True:
            try:
                self._io.send(payload)
                break
            except zmq.Again:  # the send queue is full: wait for it to drain, up to the timeout
                if self._loop.time() >= deadline:
                    self._connected = False
                    raise RequestTimeoutError(f"could not send {message.TAG} {rid} within {timeout} s: the "
                                              f"send queue to {self._endpoint} stayed full") from None
                await asyncio.sleep(0.001)
        future: asyncio.Future[Message] = self._loop.create_future()
        self._pending[rid] = (future, self._loop.call_later(timeout, self._expire, rid, message, timeout))
        if not self._check_soon:  # a send can consume the FD's edge: look once this loop turn
            self._check_soon = True
            self._loop.call_soon(self._on_readable)
        reply = await future
        self._connected = True
        error = getattr(reply, "error", None)
        asked = retry_after(error) if self.config.retry_rate_limited and isinstance(error, str) else None
        if asked is not None:
            wait = asked * (1.0 + random.random())  # jittered: many callers do not come back at once
            left = deadline - self._loop.time()
            if wait < left:
                self.rate_limited += 1
                await asyncio.sleep(wait)
                return await self._request(message, expected, left - wait)
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

    async def spawn_remote(self, config: AgentConfig, timeout_secs: float | None = None,
                           metadata: dict[str, str] | None = None) -> AgentInfo:
        """Start an agent. *timeout_secs* is the request's field: a descartes_fast server ends the
        agent (``failed``) after that much wall-clock time (the Rust server ignores it). Unlike the
        Rust client, this does not wait that long for the reply: ``request_timeout_secs`` applies.
        *metadata* (a descartes_fast server's): ``cwd``, ``resume`` (a session id to resume),
        ``restart`` / ``max_restarts`` / ``restart_backoff`` (the restart policy)."""
        limit = math.ceil(timeout_secs) if timeout_secs else None
        reply = await self._request(SpawnRequest(next(self._ids), config, limit, metadata or None), SpawnResponse)
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

    async def say(self, agent_id: uuid.UUID, text: str | None, end: bool = False) -> str:
        """Send *text* to a session agent as its next turn (``end``: then end the session once its
        turns are done); returns ``sent``, ``queued`` (a turn is running) or ``ending``. A custom
        action ``say`` of a descartes_fast server."""
        reply = await self._command(agent_id, _C.CUSTOM_ACTION, {"action": "say",
                                                                  "params": {"text": text, "end": end}})
        return str(reply.data.get("result")) if isinstance(reply.data, dict) else "sent"

    async def resize(self, agent_id: uuid.UUID, rows: int, cols: int) -> dict[str, int]:
        """Set the terminal size of an agent that runs under one (a backend with ``stdin = "pty"``;
        the program gets SIGWINCH); returns ``{"rows": …, "cols": …}``. A custom action ``resize``
        of a descartes_fast server."""
        reply = await self._command(agent_id, _C.CUSTOM_ACTION, {"action": "resize",
                                                                  "params": {"rows": rows, "cols": cols}})
        result = reply.data.get("result") if isinstance(reply.data, dict) else None
        return dict(result) if isinstance(result, dict) else {"rows": rows, "cols": cols}

    async def agent_state(self, agent_id: uuid.UUID, usage: bool = False) -> dict[str, Any]:
        """What ``get_status`` answers: ``status`` (Rust's capitalised name) and, from a
        descartes_fast server, ``pid``, ``exit_code``, ``signal``, ``ended_at`` (ns) and
        ``processes_left`` (what is still running of the agent once it has ended), ``reason`` (of its
        last transition), ``cpu_secs`` and ``max_rss_kib`` (once ended), ``terminal`` (rows and
        cols, if it runs under one), ``output_bytes``, a session's totals and, with *usage*, while
        it runs: ``usage`` (its CPU seconds and memory bytes now)."""
        reply = await self._command(agent_id, _C.GET_STATUS, {"usage": True} if usage else None)
        return dict(reply.data) if isinstance(reply.data, dict) else {}

    async def pause_agent(self, agent_id: uuid.UUID, force: bool = False) -> str:
        """Pause; returns the mode the server used (``"cooperative"`` or ``"forced"``)."""
        reply = await self._command(agent_id, _C.PAUSE, {"force": True} if force else None)
        return (reply.data or {}).get("mode", "forced" if force else "cooperative")

    async def resume_agent(self, agent_id: uuid.UUID) -> None:
        await self._command(agent_id, _C.RESUME)

    async def stop_agent(self, agent_id: uuid.UUID) -> bool:
        """Stop the agent; False when it had ended already (a descartes_fast server says so)."""
        reply = await self._command(agent_id, _C.STOP)
        return not (isinstance(reply.data, dict) and "already" in reply.data)

    async def kill_agent(self, agent_id: uuid.UUID) -> bool:
        """Kill the agent; False when its process had exited already (a descartes_fast server says so)."""
        reply = await self._command(agent_id, _C.KILL)
        return not (isinstance(reply.data, dict) and "already" in reply.data)

    async def write_agent_stdin(self, agent_id: uuid.UUID, data: bytes | str, eof: bool = False) -> int:
        """Write to the agent's stdin (text as is, bytes as an int array); returns bytes written."""
        if isinstance(data, bytes):
            try:
                payload: Any = data.decode("utf-8")
            except UnicodeDecodeError:
                payload = list(data)
        else:
            payload = data
        args = {"data": payload, "eof": True} if eof else {"data": payload}
        reply = await self._command(agent_id, _C.WRITE_STDIN, args)
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
        """One command on several agents. A server that does not answer ``batch_control_command``
        (a Rust Descartes server) gets one ``control_command`` per agent instead (said once in the log)."""
        if self.server_metadata is not None and not self.descartes_fast_server:
            self._note_once("batch", f"the server at {self._endpoint} is not a descartes_fast server and does not "
                                     "answer batch_control_command: sending one control_command per agent instead")
            return await self._batch_one_by_one(list(agent_ids), command_type, payload, fail_fast)
        request = BatchControlCommand(next(self._ids), list(agent_ids), command_type, payload, fail_fast)
        return await self._request(request, BatchControlResponse, 2 * self.config.request_timeout_secs)

    async def _batch_one_by_one(self, agent_ids: list[uuid.UUID], command_type: ControlCommandType,
                                payload: Any, fail_fast: bool) -> BatchControlResponse:
        results = []
        for agent_id in agent_ids:
            reply = await self._request(ControlCommand(next(self._ids), agent_id, command_type, payload),
                                        CommandResponse)
            results.append(BatchAgentResult(agent_id, reply.success, reply.status, reply.error))
            if fail_fast and not reply.success:
                break
        ok = sum(r.success for r in results)
        return BatchControlResponse("", ok == len(agent_ids), results, ok, len(results) - ok)

    async def read_output_lines(self, agent_id: uuid.UUID, stream: ZmqOutputStream = ZmqOutputStream.BOTH,
                                page: int = 1000) -> AsyncIterator[str]:
        """Every line of the agent's retained output, in pages of *page* lines (``output_query``).

        A server that does not answer output queries (a Rust Descartes server) is read with
        ``read_stdout`` / ``read_stderr`` instead, which is destructive there: each line is given once,
        to whichever client reads it first (said once in the log)."""
        if self.server_metadata is not None and not self.descartes_fast_server:
            self._note_once("output", f"the server at {self._endpoint} is not a descartes_fast server and does not "
                                      "answer output queries: reading with read_stdout/read_stderr instead "
                                      "(destructive there: each line is read once)")
            wanted = {ZmqOutputStream.STDOUT: (_C.READ_STDOUT,), ZmqOutputStream.STDERR: (_C.READ_STDERR,)}.get(
                stream, (_C.READ_STDOUT, _C.READ_STDERR))
            for kind in wanted:
                while (raw := _read_data(await self._command(agent_id, kind))) is not None:
                    yield raw.decode("utf-8", "replace").rstrip("\r\n")
            return
        offset = 0
        while True:
            try:
                reply = await self.query_agent_output(agent_id, stream, limit=page, offset=offset)
            except ServerError as exc:  # a page of long lines over the message limit: smaller pages
                if not str(exc).startswith(REPLY_TOO_LARGE) or page == 1:
                    raise
                page = max(1, page // 4)
                continue
            for line in reply.lines:
                yield line
            offset += len(reply.lines)
            if not reply.has_more or not reply.lines:
                return

    # -- subscriptions --

    async def subscribe_status_updates(self, agent_id: uuid.UUID | None = None) -> Subscription[StatusUpdate]:
        """Status updates of one agent (or of all, heartbeats included) as they are published."""
        topic = status_topic(agent_id) if agent_id is not None else b"status."
        return await self._subscribe(topic, StatusUpdate, agent_id)

    async def stream_logs(self, agent_id: uuid.UUID) -> Subscription[LogStreamMessage]:
        """The agent's log chunks as they are published (``sequence`` counts per stream): in the
        bin form where the server publishes it (a descartes_fast server), else the Rust form."""
        topic = bin_topic(agent_id) if "bin" in (self.server_metadata or {}).get("log_forms", "").split(",") \
            else log_topic(agent_id)
        return await self._subscribe(topic, LogStreamMessage, agent_id)

    async def follow_logs(self, agent_id: uuid.UUID, *, from_line: int | None = None,
                          from_sequence: int | None = None, from_now: bool = False,
                          streams: ZmqOutputStream = ZmqOutputStream.BOTH) -> Replay | Follow:
        """The agent's output chunks until it has ended: by default every chunk the server stored
        from the first on, then the live ones, each exactly once and in order (stdout and stderr in
        the order they were written). Start instead at a line, a chunk sequence number or now
        (``from_line``, ``from_sequence``, ``from_now``; per stream).

        A server that stores no output (a Rust Descartes server) gives live chunks only, and is
        asked for the agent's status when quiet, to see it end."""
        logs = await self.stream_logs(agent_id)
        events = await self.subscribe_status_updates(agent_id)
        if not self.descartes_fast_server:
            return Follow(logs, events, await self._ended(agent_id), lambda: self._ended(agent_id), _POLL_OTHERS)
        return Replay(self.read_output, agent_id, _LOG_STREAMS[streams], Start(from_line, from_sequence, from_now),
                      logs, events, _POLL_OURS, self.config.follow_resume_secs)

    async def stored_output(self, agent_id: uuid.UUID, streams: ZmqOutputStream = ZmqOutputStream.BOTH) -> Replay:
        """Every chunk the server stores for the agent now, stdout and stderr in the order they were
        written (no live chunks: it ends when it has read what is stored)."""
        return Replay(self.read_output, agent_id, _LOG_STREAMS[streams], Start(), None, None, _POLL_OURS)

    async def read_output(self, agent_id: uuid.UUID, stream: LogStreamType, *, offset: int | None = None,
                          sequence: int | None = None, line: int | None = None,
                          max_bytes: int | None = None) -> OutputReadResponse:
        """One read of the agent's stored output (``output_read``, a descartes_fast server only): raw
        bytes from a byte offset, chunk sequence or line, and what the stream holds and dropped."""
        reply = await self._request(OutputReadRequest(next(self._ids), agent_id, stream, offset, sequence, line,
                                                      max_bytes), OutputReadResponse)
        if not reply.success:
            raise ServerError(reply.error or "Output read failed", reply)
        return reply

    async def _ended(self, agent_id: uuid.UUID) -> bool:
        """Whether the agent has ended (or the server no longer knows it); False if it does not answer."""
        try:
            return (await self.get_agent_status(agent_id)).is_terminal()
        except RequestTimeoutError:
            return False
        except ServerError as exc:
            if str(exc).startswith("Agent not found"):
                return True
            raise

    async def _subscribe(self, topic: bytes, kind: type[_M], agent_id: uuid.UUID | None) -> Subscription[_M]:
        if self._sub is None:
            self._sub = self._ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, 100_000)
            if self._curve:
                curve_client(self._sub, *self._curve)
            self._sub.connect(await self._pub_endpoint(agent_id))
            self._loop.add_reader(self._sub.fileno(), self._on_event)
        sub = Subscription(topic, kind, self.config.subscription_queue, self._unsubscribe)
        if not self._subs[topic]:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._subs[topic].append(sub)
        await asyncio.sleep(0.1)  # a new subscription takes a moment to reach the publisher
        return sub

    async def _pub_endpoint(self, agent_id: uuid.UUID | None) -> str:
        """Where events are published: the configured endpoint, else what the server says (its health
        metadata, or its ``stream_logs`` answer for *agent_id*), else the next port (the convention)."""
        if self.config.pub_endpoint:
            return self.config.pub_endpoint
        said = (self.server_metadata or {}).get("pub_endpoint")
        if not said and agent_id is not None:
            data = (await self._command(agent_id, _C.STREAM_LOGS)).data or {}
            said = data.get("pub_endpoint")
        if said:
            return _same_host(said, self._endpoint)
        parts = urlsplit(self._endpoint)
        return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{(parts.port or 5555) + 1}"))

    def _unsubscribe(self, sub: Subscription[Any]) -> None:
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
            if not subs and self._sub is not None:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, sub.topic)

    def _on_event(self) -> None:
        """Take what the SUB socket holds for ``_EVENT_SECS_PER_TURN`` at most, then let the loop
        turn: a publisher faster than decoding must not starve it (the callers' own work, the
        follows that consume these). The rest waits for the next turn (libzmq's descriptor does
        not signal again for frames already there)."""
        sock = self._sub
        until = time.monotonic() + _EVENT_SECS_PER_TURN
        while True:
            if sock is None or sock.closed or not has_input(sock):
                return
            frame = sock.recv(zmq.NOBLOCK)
            try:
                topic, payload = parse_pub_frame(frame)
                message = decode_chunk(payload) if topic.startswith(BIN_PREFIX) else codec.decode(payload)
            except ProtocolError:
                continue
            for prefix, subs in self._subs.items():
                if topic.startswith(prefix):
                    for sub in subs:
                        if isinstance(message, sub.kind):
                            sub.offer(message)
            if time.monotonic() >= until:
                break
        self._loop.call_soon(self._on_event)


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


