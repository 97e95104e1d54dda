"""The agent server: a ROUTER socket for requests, a PUB socket for events (:mod:`.events`).

Requests are drained from the ROUTER socket whenever it is readable, by the dispatcher twin
(compiled when available): no per-message future, no one-await-per-message receive. Replies
go out at once, except for spawns, which run as tasks so a slow spawn blocks nobody. What each
request does is :mod:`.control`'s business; this module owns the sockets and the lifecycle.

Security (README "Security"): with a secret key and an allowlist both sockets are CURVE
servers and :class:`~descartes_fast.server.security.ZapHandler` admits the listed client keys;
without them the server binds loopback (or ipc) only, unless ``insecure`` is set. Every
request passes the :class:`~descartes_fast.server.admission.Gate` (allowlist again, rate limit)
before it is decoded; queues are bounded by high-water marks, messages by ZMQ_MAXMSGSIZE.

Metrics (``--metrics``, :mod:`.metrics`): when on, every handler is wrapped by
:meth:`AgentServer._measured`, which sends the reply itself and counts and times it; the
handlers answered later (spawns, output reads, tracked replies) find the request's start in
``_started`` and report when they send. When off nothing is wrapped and ``_started`` stays
None: all the request path gains is one ``is None`` test where a reply is sent later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

import descartes_fast
from descartes_fast import _impl
from descartes_fast.agents.keeper_link import KeeperLink
from descartes_fast.agents.state import StateDir
from descartes_fast.agents.supervisor import AgentLimitError, SpawnError, SpawnPolicyError, Supervisor
from descartes_fast.server.admission import Gate, Refusal, Throttle
from descartes_fast.server.config import ServerConfig, metrics_address
from descartes_fast.server.control import Controller, read_size, spawn_size
from descartes_fast.server.events import NIL, EventPublisher
from descartes_fast.server.holdings import LARGE_REPLY, Holdings
from descartes_fast.server.host import host_facts
from descartes_fast.server.security import ZapHandler
from descartes_fast.wire.codec import get_implementation
from descartes_fast.wire.constants import MAX_MESSAGE_SIZE, PROTOCOL_VERSION
from descartes_fast.wire.curve import curve_server, load_secret_key
from descartes_fast.wire.errors import MessageTooLargeError, ProtocolError
from descartes_fast.wire.readiness import has_input
from descartes_fast.wire.schema import (
    MESSAGE_TYPES,
    AgentStatus,
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
    LogStreamType,
    Message,
    OutputQueryRequest,
    OutputQueryResponse,
    OutputReadRequest,
    OutputReadResponse,
    SpawnRequest,
    SpawnResponse,
)
from descartes_fast.wire.texts import busy, handler_failed, reply_too_large

if TYPE_CHECKING:
    from descartes_fast.server.metrics import Metrics, Reading

__all__ = ["AgentServer"]

log = logging.getLogger("descartes_fast.server")

_TAGS = {cls.TAG: cls.__name__ for cls in MESSAGE_TYPES}
_TAGS_OF: dict[type, str] = {cls: cls.TAG for cls in MESSAGE_TYPES}
#: reply class -> the request it answers (where its error reply has that reply's shape)
_ANSWERS = {SpawnResponse: "SpawnRequest", CommandResponse: "ControlCommand", ListAgentsResponse: "ListAgentsRequest",
            OutputQueryResponse: "OutputQueryRequest", OutputReadResponse: "OutputReadRequest",
            BatchControlResponse: "BatchControlCommand", HealthCheckResponse: "HealthCheckRequest"}
#: reply class -> how to ask for less than a reply over the message limit
_ASK_FOR_LESS = {
    OutputQueryResponse: "ask for fewer lines at a time (output_query limit, then offset for the next page)",
    OutputReadResponse: "ask for fewer bytes at a time (output_read max_bytes)",
    ListAgentsResponse: "ask for fewer agents at a time (list_agents limit, or a status filter)",
    CommandResponse: "ask for less at a time (query_output max_lines; for output, output_query with "
                     "offset/limit or output_read with max_bytes)",
}
_BUSY_RETRY_MS = 20  # what a 'busy' reply asks a client to wait
#: control commands whose reply may be large (output lines): sent tracked, see AgentServer._tracked
_LARGE_ANSWERS = frozenset({ControlCommandType.QUERY_OUTPUT, ControlCommandType.READ_STDOUT,
                            ControlCommandType.READ_STDERR})
_SWITCH_INTERVAL = 0.0005  # seconds a worker thread may hold the interpreter while the loop waits
_LOOP_TICK = 0.01  # seconds between checks of the loop's lateness
_LOOP_STALL = 0.005  # a loop later than this counts as stalled
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_HANDSHAKE_ERRORS: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "security mechanism mismatch: one side uses CURVE, the other not",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic error: the client may have a wrong server key"}


class AgentServer:
    """Serve requests until :meth:`request_stop` (or SIGTERM/SIGINT under :meth:`run`)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.codec = get_implementation(config.implementation)
        self.started = time.monotonic()
        allowed = config.policy.backends
        #: the backends a spawn may ask for here (told in heartbeats and health)
        self._offered = [n for n in config.backends.names() if allowed is None or n in allowed]
        self.stats = {"spawned": 0, "spawn_failures": 0, "spawns_refused": 0, "pub_overflows": 0,
                      "log_chunks_unsent": 0, "log_chunks_rust_form": 0,
                      "log_chunks_bin_form": 0, "status_updates_unsent": 0, "disconnects": 0, "handshake_failures": 0}
        self._ctx = zmq.Context()
        self.events = EventPublisher(self._ctx.socket(zmq.XPUB) if config.pub else None, self.codec.encode,
                                     self.stats)
        self.state = StateDir(Path(config.state_dir), tail_bytes=config.output_limit,
                              agent_bytes=config.log_max_bytes, total_bytes=config.state_max_bytes)
        keeper = KeeperLink(self.state.path, "die" if config.agents_die_with_server else "keep", config.containment)
        self.supervisor = Supervisor(self.state, config.backends, max_agents=config.max_agents,
                                     stop_grace=config.stop_grace, retention=config.retention, policy=config.policy,
                                     listener=self.events, stdin_buffer=config.stdin_buffer, keeper=keeper)
        self.controller = Controller(self.supervisor, config.pub)
        self._handshake_log = Throttle(60.0)  # per reason: a refused peer retries every 100 ms
        self.zap: ZapHandler | None = None
        self.holdings = Holdings(config.request_buffer)
        self.gate = Gate(config.rate_limit, config.rate_burst,
                         allowlist=(lambda: self.zap.keys if self.zap else {}) if config.curve else None)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._monitor = self._router.get_monitor_socket(zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED)
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop_lag_max = 0.0  # seconds: the latest the loop ever was (see _watch_loop)
        self.loop_stalls = 0
        self._stopping: asyncio.Event | None = None
        self.endpoints: dict[str, str] = {}
        #: the Prometheus metrics (--metrics), None when off; prometheus_client is imported only then
        self.metrics: Metrics | None = None
        if config.metrics is not None:
            from descartes_fast.server.metrics import Metrics
            self.metrics = Metrics()
            self.events.metrics = self.metrics
        #: with metrics on, (message type, perf_counter()) of the request being handled; else None
        self._started: tuple[str, float] | None = None
        dispatch = _impl.load("dispatch", config.implementation)
        handlers: dict[type, Any] = {cls: self._unexpected for cls in MESSAGE_TYPES}
        c = self.controller
        handlers.update({
            SpawnRequest: self._spawn, ControlCommand: self._control, CustomActionRequest: c.custom_action,
            BatchControlCommand: self._tracked(c.batch), ListAgentsRequest: self._tracked(c.list_agents),
            OutputQueryRequest: self._later(c.output_query, lambda m: MAX_MESSAGE_SIZE),
            OutputReadRequest: self._later(c.output_read, lambda m: 2 * read_size(m) + 1024),
            HealthCheckRequest: lambda m, e: self.health(m.request_id),
        })
        self._answer_large = self._tracked(c.control)
        if self.metrics is not None:
            handlers = {cls: self._measured(_TAGS_OF[cls], handler) for cls, handler in handlers.items()}
        self.dispatcher = dispatch.Dispatcher(self._router, handlers,
                                              self._refuse if self.metrics is None else self._refuse_counted,
                                              gate=self.gate, on_failure=self._failed)
        #: how requests reach libzmq, for the start-up log and health metadata
        self.dispatch_path = "direct libzmq calls" if self.dispatcher.direct else \
            f"libzmq through pyzmq ({dispatch.DIRECT_REASON})"

    # -- lifecycle --

    def bind(self) -> None:
        """Check the security settings and bind both sockets (separately from serving, so
        tests can bind port 0); raises SecurityError or zmq.ZMQError."""
        config = self.config
        config.check_security()
        if config.curve:
            assert config.curve_secret_key is not None and config.authorized_keys is not None
            public, secret = load_secret_key(config.curve_secret_key)
            self.zap = ZapHandler(self._ctx, config.authorized_keys)  # before any CURVE socket binds
            curve_server(self._router, public, secret, "requests")
            if self.events.sock is not None:
                curve_server(self.events.sock, public, secret, "events")
        self._router.setsockopt(zmq.LINGER, 1000)
        self._router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_SIZE)  # docs/protocol.md §1: never buffer more
        # a full request queue holds the client back (nothing is lost); a full reply queue drops
        self._router.setsockopt(zmq.RCVHWM, config.request_hwm)
        self._router.setsockopt(zmq.SNDHWM, config.reply_hwm)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply that cannot be queued is counted, not lost unseen
        if self.metrics is not None and self.metrics.url is None and config.metrics is not None:
            self.metrics.serve(*metrics_address(config.metrics))  # OSError naming the address
        self._router.bind(config.bind)
        self.endpoints["bind"] = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        if config.pub is not None:
            self.endpoints["pub"] = self.events.bind(config.pub, config.pub_hwm)

    async def serve(self) -> None:
        """Answer requests until :meth:`request_stop`; then stop agents and close."""
        if not self.endpoints:
            self.bind()
        # reads and queries run on worker threads; the loop must get the interpreter back within a
        # millisecond of asking (the default hand-over interval is 5 ms) so that requests stay fast
        sys.setswitchinterval(_SWITCH_INTERVAL)
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        config = self.config
        self.supervisor.attach(loop)
        if self.metrics is not None:
            self.metrics.watch(loop, self._reading)
        log.info("descartes_fast %s server %s: %s twins, %s; requests on %s, events on %s, max_agents=%d, "
                 "backends: %s", descartes_fast.__version__, config.server_id, config.implementation,
                 self.dispatch_path, self.endpoints["bind"], self.endpoints.get("pub", "(none)"), config.max_agents,
                 ", ".join(config.backends.names()))
        if self.zap is not None:
            self.zap.start()
            log.info("CURVE on: %d authorized client key(s) from %s (SIGHUP reloads them)",
                     len(self.zap.keys), config.authorized_keys)
        elif config.insecure:
            log.warning("INSECURE (--insecure): no encryption or authentication on %s; anyone who can reach "
                        "it can run programs on this machine", " and ".join(self.endpoints.values()))
        else:
            log.info("no CURVE: serving this machine only (%s)", " and ".join(self.endpoints.values()))
        if self.metrics is not None:
            log.info("metrics on %s", self.metrics.url)
        unknown = sorted(n for n in (config.policy.backends or ()) if n not in config.backends)
        if unknown:
            log.warning("[policy] backends names unknown backend(s): %s (known: %s)", ", ".join(unknown),
                        ", ".join(config.backends.names()))
        log.info("limits: %s requests/s per client; per client %d bytes of requests (%d of the largest queued) "
                 "and %d replies queued; %d bytes of events per subscriber (%d of the largest); messages up to "
                 "%d bytes", f"{config.rate_limit:g}" if config.rate_limit else "no limit on",
                 config.request_buffer, config.request_hwm, config.reply_hwm, config.pub_buffer, config.pub_hwm,
                 MAX_MESSAGE_SIZE)
        loop.add_reader(self._monitor.fileno(), self._on_monitor)
        self._on_monitor()  # the FD is edge-triggered: take what is queued already
        loop.add_reader(self._router.fileno(), self._on_readable)
        self._on_readable()  # requests may have queued before the reader was added
        if self.events.sock is not None:
            loop.add_reader(self.events.sock.fileno(), self.events.take_subscriptions)
            self.events.take_subscriptions()
        heartbeat = asyncio.create_task(self.events.heartbeats(config.server_id, config.heartbeat_interval,
                                                               self._heartbeat_facts))
        self._watch_loop(loop.time() + _LOOP_TICK)
        await self._stopping.wait()
        if config.keep_agents:
            log.info("shutting down: no new requests; leaving the agents to the keeper (--keep-agents)")
        else:
            log.info("shutting down: no new requests; stopping agents (grace %.1f s)", config.stop_grace)
        loop.remove_reader(self._router.fileno())
        loop.remove_reader(self._monitor.fileno())
        if self.events.sock is not None:
            loop.remove_reader(self.events.sock.fileno())
        heartbeat.cancel()
        await self.supervisor.shutdown(keep_agents=config.keep_agents)
        for task in list(self._tasks):
            await asyncio.wait([task], timeout=5)
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.close)
        self._router.disable_monitor()
        self._monitor.close()
        if self.zap is not None:
            self.zap.close()
        self._router.close()
        self.events.close()
        self._ctx.term()
        self.state.close()
        log.info("stopped")

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def run(self) -> None:
        """serve(), stopping on SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_keys)
        await self.serve()

    def reload_keys(self) -> None:
        """SIGHUP: read the allowlist again. A removed key's requests are dropped from now on,
        and its subscriptions end (the event socket is re-bound; good subscribers reconnect)."""
        if self.zap is None:
            log.info("SIGHUP: no --authorized-keys to reload")
            return
        removed = self.zap.reload()
        if removed and self.events.sock is not None:
            self.events.rebind()
            log.info("event socket re-bound so that %s stop receiving events", ", ".join(sorted(removed)))

    # -- requests --

    def _on_monitor(self) -> None:
        """Count dropped request connections (a peer that went away, or that sent more than
        MAX_MESSAGE_SIZE: libzmq does not say which) and failed handshakes."""
        while True:
            try:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.stats["disconnects"] += 1
                continue
            self.stats["handshake_failures"] += 1
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                continue  # the ZAP handler has said who and why
            value = int(event["value"])
            reason = (f"{zmq.Event(event['event']).name}: " + (
                _HANDSHAKE_ERRORS.get(value, hex(value))
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL else os.strerror(value)))
            if self._handshake_log.due(reason) is not None:
                log.warning("a client failed the %s handshake on %s (%s)", "CURVE" if self.zap else "ZMTP",
                            event["endpoint"].decode(errors="replace"), reason)

    def _on_readable(self) -> None:
        """Take what is queued; come back soon if more is (ZeroMQ's FD is edge-triggered)."""
        self.dispatcher.drain()
        if has_input(self._router):
            asyncio.get_running_loop().call_soon(self._on_readable)

    def _send_reply(self, envelope: list, message: Message, client: object, held: int) -> None:
        """Send a reply the dispatcher does not send (to a request answered later, or one whose reply
        may be large), letting go of the *held* bytes the request took; a large reply stays on its
        client's budget until libzmq has sent it."""
        self.holdings.release(client, held)
        if self._router.closed:
            return
        try:
            payload = self.codec.encode(message)
        except ProtocolError:
            self.dispatcher.reply(envelope, message)  # which answers in its place, as for any reply
            payload = None
        if payload is not None:
            large = len(payload) >= LARGE_REPLY
            try:
                for frame in envelope:
                    self._router.send(frame, zmq.NOBLOCK | zmq.SNDMORE)
                sent = self._router.send(payload, zmq.NOBLOCK, copy=not large, track=large)
            except zmq.ZMQError:  # its queue is full (EAGAIN), or it has gone (EHOSTUNREACH)
                self.dispatcher.replies_dropped += 1
            except Exception as exc:  # a bug: still one reply, in place of this one
                self.dispatcher.failures += 1
                self.dispatcher.reply(envelope, self._failed(message, exc))
            else:
                if isinstance(sent, zmq.MessageTracker):  # libzmq holds the bytes until it has sent them
                    self.holdings.sending(client, sent, len(payload))
        # a send can consume the FD's edge: look for requests that arrived meanwhile
        if has_input(self._router):
            asyncio.get_running_loop().call_soon(self._on_readable)

    def _client(self, envelope: list) -> object:
        """Whose budget a request counts against: its CURVE key, else its connection."""
        identity = self.gate.identity
        return identity if identity.startswith("key:") else bytes(envelope[0]) if envelope else identity

    def _hold(self, msg: Any, envelope: list, size: int) -> tuple[object, Message | None]:
        """Take *size* bytes of the request's client's budget: (client, None), or (client, the
        'busy' reply) when it has no room."""
        client = self._client(envelope)
        held = self.holdings.take(client, size)
        if held is None:
            return client, None
        kind = _TAGS.get(msg.TAG)
        text = busy(self.gate.identity, held, self.holdings.limit, _BUSY_RETRY_MS)
        return client, _error_reply(kind, msg.request_id, getattr(msg, "agent_id", NIL), text,
                                    self.config.server_id)

    def _later(self, handler: Callable[[Any, list], Awaitable[Message]],
               size: Callable[[Any], int]) -> Callable[[Any, list], Message | None]:
        """A handler whose reply comes later (it waits for a worker thread): run it as a task,
        holding *size(request)* bytes of its client's budget until it is answered."""
        def start(msg: Any, envelope: list) -> Message | None:
            client, refusal = self._hold(msg, envelope, size(msg))
            if refusal is not None:
                return refusal
            started = self._started

            async def answer() -> None:
                try:
                    reply = await handler(msg, envelope)
                except Exception as exc:
                    self.dispatcher.failures += 1
                    reply = self._failed(msg, exc)
                if started is None:
                    self._send_reply(envelope, reply, client, size(msg))
                else:
                    self._send_measured(started, envelope, reply, client, size(msg))
            self._start(answer())
            return None
        return start

    def _tracked(self, handler: Callable[[Any, list], Message]) -> Callable[[Any, list], Message | None]:
        """A handler answered at once whose reply may be large (listings, batches, output lines):
        refused 'busy' while its client is over its budget, and a large reply is sent tracked, so
        that it counts against that budget until libzmq has sent it."""
        def run(msg: Any, envelope: list) -> Message | None:
            client, refusal = self._hold(msg, envelope, 0)
            if refusal is None:
                started = self._started
                if started is None:
                    self._send_reply(envelope, handler(msg, envelope), client, 0)
                else:
                    self._send_measured(started, envelope, handler(msg, envelope), client, 0)
            return refusal
        return run

    def _measured(self, kind: str, handler: Callable[[Any, list], Message | None]) -> Callable[[Any, list], None]:
        """With metrics on: *handler* (of requests of type *kind*), its reply sent here, counted and
        timed; a reply sent later is counted where it is sent (it finds its start in ``_started``).
        Does what the dispatcher does with a reply and a failure, so that nothing else changes."""
        assert self.metrics is not None
        holdings, add = self.holdings, self.metrics.of(kind).add

        def run(msg: Any, envelope: list) -> None:
            started = self._started = (kind, perf_counter())
            refused = holdings.refused
            dispatcher = self.dispatcher
            try:
                reply = handler(msg, envelope)
            except Exception as exc:
                dispatcher.failures += 1
                reply = self._failed(msg, exc)
            if reply is not None:
                failures = dispatcher.failures
                dispatcher.reply(envelope, reply)
                add("refused" if holdings.refused != refused else "error" if dispatcher.failures != failures
                    else _result(reply), perf_counter() - started[1])
        return run

    def _send_measured(self, started: tuple[str, float], envelope: list, message: Message, client: object,
                       held: int, result: str | None = None) -> None:
        """:meth:`_send_reply`, then count and time the request (with metrics on)."""
        assert self.metrics is not None
        failures = self.dispatcher.failures
        self._send_reply(envelope, message, client, held)
        if self.dispatcher.failures != failures:  # it could not be sent: an error reply went in its place
            result = "error"
        self.metrics.request(started[0], result or _result(message), perf_counter() - started[1])

    def _control(self, msg: ControlCommand, envelope: list) -> Message | None:
        if msg.command_type in _LARGE_ANSWERS:
            return self._answer_large(msg, envelope)
        return self.controller.control(msg, envelope)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run *work* as a task the server keeps until it is done (shutdown waits for it)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, msg: SpawnRequest, envelope: list) -> Message | None:
        size = spawn_size(msg)
        client, refusal = self._hold(msg, envelope, size)
        if refusal is None:
            self._start(self._do_spawn(msg, envelope, self.gate.identity, client, size, self._started))
        return refusal

    async def _do_spawn(self, msg: SpawnRequest, envelope: list, owner: str, client: object, held: int,
                        started: tuple[str, float] | None = None) -> None:
        sid = self.config.server_id
        reply: Message
        refused = False
        try:
            agent = await self.supervisor.spawn(msg.config, owner=owner, timeout_secs=msg.timeout_secs,
                                                metadata=msg.metadata)
        except SpawnPolicyError as exc:
            refused = True
            self.stats["spawns_refused"] += 1
            log.warning("refused spawn %s (%s) from %s: %s", msg.request_id, msg.config.model_backend, owner, exc)
            reply = SpawnResponse(msg.request_id, False, None, str(exc), sid)
        except AgentLimitError as exc:
            refused = True
            reply = SpawnResponse(msg.request_id, False, None, str(exc), sid)
        except SpawnError as exc:
            self.stats["spawn_failures"] += 1
            log.warning("spawn %s (%s) failed: %s", msg.request_id, msg.config.model_backend, exc)
            reply = SpawnResponse(msg.request_id, False, None, str(exc), sid)  # one prefix (Rust: two)
        except Exception as exc:  # a bug: still one reply
            self.dispatcher.failures += 1
            reply = self._failed(msg, exc)
        else:
            self.stats["spawned"] += 1
            log.info("spawned agent %s (%s, pid %d) for %s from %s", agent.id, msg.config.model_backend,
                     agent.pid, msg.request_id, owner)
            reply = SpawnResponse(msg.request_id, True, agent.info(), None, sid)
        if started is None:
            self._send_reply(envelope, reply, client, held)
        else:
            self._send_measured(started, envelope, reply, client, held, "refused" if refused else None)

    def health(self, request_id: str) -> HealthCheckResponse:
        d, g, z = self.dispatcher, self.gate, self.zap
        metadata = {"server_id": self.config.server_id, "endpoint": self.config.bind,
                    "max_agents": str(self.config.max_agents), "descartes_fast": descartes_fast.__version__,
                    "implementation": self.config.implementation, "version": descartes_fast.__version__,
                    "libzmq_direct": "yes" if d.direct else "no", "dispatch": self.dispatch_path,
                    "pub_endpoint": self.endpoints.get("pub", ""), "log_forms": "rust,bin",
                    "security": "curve" if z else "none",
                    "requests": str(d.received), "decode_errors": str(d.decode_errors),
                    "bad_frames": str(d.bad_frames), "rate_limited": str(g.rate_limited),
                    "failures": str(d.failures), "replies_dropped": str(d.replies_dropped),
                    "unauthorized": str(g.unauthorized), "auth_accepted": str(z.accepted if z else 0),
                    "auth_refused": str(z.refused if z else 0), **{k: str(v) for k, v in self.stats.items()},
                    "state_dir": str(self.state.path), "stored_bytes": str(self.state.store.size),
                    "state_max_bytes": str(self.config.state_max_bytes),
                    "evicted_agents": str(self.state.store.evicted_agents),
                    "subscribed_topics": str(len(self.events.topics)),
                    "held_bytes": str(self.holdings.total()), "busy_refused": str(self.holdings.refused),
                    "loop_lag_max_ms": f"{self.loop_lag_max * 1e3:.1f}", "loop_stalls": str(self.loop_stalls),
                    "containment": self.supervisor.keeper.containment,
                    "keeper_pid": str(self.supervisor.keeper.keeper_pid),
                    "cgroups": str(cg.base) if (cg := self.supervisor.keeper.cgroups) else "",
                    "lifecycle": "agents-die-with-server" if self.config.agents_die_with_server else
                    "keep-agents" if self.config.keep_agents else "default",
                    "backends": ",".join(self._offered), "labels": json.dumps(self.config.labels),
                    "heartbeat_interval_secs": str(self.config.heartbeat_interval)}
        return HealthCheckResponse(request_id, True, PROTOCOL_VERSION, int(time.monotonic() - self.started),
                                   self.supervisor.active_count(), metadata)

    def _reading(self) -> Reading:
        """What the metrics read from the server at a scrape (on the loop): the health metadata's
        counters and the agents (see :mod:`.metrics`)."""
        from descartes_fast.server.metrics import Reading

        d, g, z, stats = self.dispatcher, self.gate, self.zap, self.stats
        agents = dict.fromkeys(AgentStatus, 0)
        output = {}
        for agent in self.supervisor.agents():
            agents[agent.status] += 1
            output[agent.id] = (agent.facts(LogStreamType.STDOUT).end_offset,
                                agent.facts(LogStreamType.STDERR).end_offset)
        info = {"server_id": self.config.server_id, "version": descartes_fast.__version__,
                "implementation": self.config.implementation, "libzmq_direct": "yes" if d.direct else "no"}
        return Reading(
            info=info, agents={str(k): v for k, v in agents.items()}, max_agents=self.config.max_agents,
            output=output, spawned=stats["spawned"], spawn_failures=stats["spawn_failures"],
            spawns_refused=stats["spawns_refused"], received=d.received,
            refusals={"rate_limited": g.rate_limited, "busy": self.holdings.refused, "unauthorized": g.unauthorized},
            auth={"accepted": z.accepted if z else 0, "refused": z.refused if z else 0},
            decode_errors=d.decode_errors, bad_frames=d.bad_frames, failures=d.failures,
            replies_dropped=d.replies_dropped, pub_overflows=stats["pub_overflows"],
            disconnects=stats["disconnects"], handshake_failures=stats["handshake_failures"],
            held_bytes=self.holdings.total(), subscribed_topics=len(self.events.topics),
            stored_bytes=self.state.store.size, state_max_bytes=self.config.state_max_bytes,
            evicted_agents=self.state.store.evicted_agents, loop_lag_max=self.loop_lag_max,
            loop_stalls=self.loop_stalls)

    def _watch_loop(self, due: float) -> None:
        """Every _LOOP_TICK: how late this callback ran is how long the loop was held (or the process
        was not scheduled); the worst and the count over _LOOP_STALL go to the health metadata."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = now - due
        if late > self.loop_lag_max:
            self.loop_lag_max = late
        if late > _LOOP_STALL:
            self.loop_stalls += 1
        if self._stopping is None or not self._stopping.is_set():
            loop.call_at(now + _LOOP_TICK, self._watch_loop, now + _LOOP_TICK)

    def _heartbeat_facts(self) -> dict[str, Any]:
        """What each heartbeat says: the server's load and what it offers (a fleet places spawns by it)."""
        # (holdings.total() also settles the tracked replies of clients that have gone)
        return {"active_agents": self.supervisor.active_count(), "uptime_secs": int(time.monotonic() - self.started),
                "held_bytes": self.holdings.total(), "max_agents": self.config.max_agents,
                "heartbeat_interval_secs": self.config.heartbeat_interval, "backends": self._offered,
                "labels": self.config.labels, **host_facts()}

    def _unexpected(self, msg: Message, envelope: list) -> ErrorResponse:
        return ErrorResponse(getattr(msg, "request_id", ""),
                             f"unexpected message type '{msg.TAG}': this server answers requests only")

    def _refuse(self, payload: Any, exc: ProtocolError | Refusal) -> Message:
        """The reply to a request that does not decode (docs/protocol.md §6) or is refused by the gate."""
        return _refusal(exc, *_salvage(payload), self.config.server_id)

    def _refuse_counted(self, payload: Any, exc: ProtocolError | Refusal) -> Message:
        """:meth:`_refuse` with metrics on: the request is counted (not timed: its reply is sent by the
        dispatcher after this returns)."""
        assert self.metrics is not None
        request_id, agent_id, tag = _salvage(payload)
        self.metrics.refused(tag if tag in _TAGS else "unknown")
        return _refusal(exc, request_id, agent_id, tag, self.config.server_id)

    def _failed(self, message: Message, exc: Exception) -> Message:
        """The error reply in place of a reply too large to send (*message* is that reply), or to a
        request whose handler failed (*message* is the request): every request gets one reply."""
        request_id = getattr(message, "request_id", "")
        agent_id = getattr(message, "agent_id", NIL)
        kind = _ANSWERS.get(type(message), type(message).__name__)
        if isinstance(exc, MessageTooLargeError):
            how = _ASK_FOR_LESS.get(type(message), "ask for less at a time")
            text = reply_too_large(exc.size, exc.limit, how)
            log.warning("reply to %s (%s) not sent: %s", request_id, type(message).__name__, text)
        else:
            text = handler_failed(kind, exc)
            log.error("failed to answer %s (%s)", request_id, kind, exc_info=exc)
        return _error_reply(kind, request_id, agent_id, text, self.config.server_id)


def _refusal(exc: ProtocolError | Refusal, request_id: str, agent_id: uuid.UUID, tag: str | None,
             server_id: str) -> Message:
    """The reply to a request that does not decode or that the gate refuses, from what was salvaged of it."""
    if isinstance(exc, Refusal):
        text, kind = str(exc), _TAGS.get(tag) if tag is not None else None
    else:
        text, kind = f"invalid request: {exc}", getattr(exc, "message_type", None)
        log.info("refused a request (%s): %s", type(exc).__name__, exc)
    return _error_reply(kind, request_id, agent_id, text, server_id)


def _result(reply: Message) -> str:
    """The result label of a request answered with *reply*: ok if it says success (healthy), else error."""
    success = getattr(reply, "success", None)
    if success is None:
        success = getattr(reply, "healthy", False)
    return "ok" if success else "error"


def _error_reply(kind: str | None, request_id: str, agent_id: uuid.UUID, text: str, server_id: str) -> Message:
    """An error reply of the shape that answers a request of class *kind* (else ErrorResponse)."""
    if kind == "SpawnRequest":
        return SpawnResponse(request_id, False, None, text, server_id)
    if kind in ("ControlCommand", "CustomActionRequest"):
        return CommandResponse(request_id, agent_id, False, None, None, text)
    if kind == "ListAgentsRequest":
        return ListAgentsResponse(request_id, False, [], text)
    if kind == "OutputQueryRequest":
        return OutputQueryResponse(request_id, agent_id, False, error=text)
    if kind == "OutputReadRequest":
        return OutputReadResponse(request_id, agent_id, False, error=text)
    return ErrorResponse(request_id, text)


def _salvage(payload: Any) -> tuple[str, uuid.UUID, Any]:
    """request_id, agent_id and type tag of a request that was not decoded, where they can be
    read at all (from the first 64 KiB: nothing large is unpacked twice)."""
    try:
        value = msgpack.unpackb(bytes(memoryview(payload)[:65536]), raw=False, strict_map_key=False)
    except Exception:  # anything at all: this is best effort on bytes already known to be bad
        return "", NIL, None
    fields: dict[str, Any] = {}
    tag = None
    if isinstance(value, list) and len(value) > 1:
        tag = value[0]
        fields = {"request_id": value[1], "agent_id": value[2] if len(value) > 2 else None}
    elif isinstance(value, dict):
        fields = value
        tag = fields.get("type")
    request_id = fields.get("request_id")
    agent_id = fields.get("agent_id")
    return (request_id if isinstance(request_id, str) else "",
            uuid.UUID(bytes=agent_id) if isinstance(agent_id, bytes) and len(agent_id) == 16 else NIL,
            tag if isinstance(tag, str) else None)
