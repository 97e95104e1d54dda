"""Prometheus metrics of the server: ``descartes-fast-server --metrics HOST:PORT``.

Imported only when metrics are on (``prometheus_client`` is not loaded otherwise). A
:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the global
one) and serves it over plain HTTP at ``http://HOST:PORT/metrics`` from a daemon thread; the
server's event loop never waits for a scrape.

Where the numbers come from:

* **Requests and their latency** are counted here, on the request path (only while metrics are
  on), in plain integers on the event loop: no lock, no prometheus_client call per request
  (its ``Counter`` and ``Histogram``, tried first, take a lock per update and cost about twice as
  much: some 1.4 µs a get_status, against about 0.5 µs now).
* **The session metrics** (restarts, tokens, cost) are prometheus_client ``Counter`` objects:
  they are fed once per session event, from any thread.
* **Everything else is read at scrape time** from the counters the server already keeps for
  its health metadata (docs/protocol.md §6.17) and from the supervisor's agents: nothing is
  counted twice and nothing is added to the hot path.

Whatever lives on the event loop is read *on the event loop*: the scrape thread hands the
reading over and waits up to 5 s, so a scrape sees the server consistently and never races it;
one that cannot get the loop in time omits those families and logs why.

Every name starts ``descartes_fast_``:

================================================  =========  ==============================================
name {labels}                                     type       what
================================================  =========  ==============================================
``requests_total {type, result}``                 counter    requests answered, by message type (the
                                                             request's tag: ``spawn_request``,
                                                             ``control_command``, ...; ``unknown`` when it
                                                             cannot be read) and result: ``ok`` (a reply
                                                             with ``success``/``healthy`` true), ``error``
                                                             (``success`` false, ``error_response``, or a
                                                             handler failure), ``refused`` (rate limited,
                                                             busy, a request that does not decode or has a
                                                             bad body, a spawn refused by the policy or the
                                                             agent limits)
``request_seconds {type}``                        histogram  from the handler's start (the request just
                                                             decoded) to its reply handed to libzmq, for a
                                                             spawn or an output read when it is answered;
                                                             buckets 50 µs to 10 s. Requests refused before
                                                             they decode (rate limited, undecodable) are in
                                                             ``requests_total`` only
``restarts_total {backend}``                      counter    agent sessions restarted
``tokens_total {backend, kind}``                  counter    tokens used by agent sessions; kind = ``input``,
                                                             ``output``, ``cached_input``
``cost_usd_total {backend}``                      counter    what agent sessions cost, in US dollars
``server_info {server_id, version,                gauge      1, with the server's identity in its labels
implementation, libzmq_direct}``
``agents {status}``                               gauge      agents the server lists, by status (every
                                                             status, 0 included; finished agents stay
                                                             listed for ``--retention``)
``max_agents``                                    gauge      the ``--max-agents`` limit
``spawns_total``                                  counter    agents spawned
``spawn_failures_total``                          counter    spawns that failed (the process or its setup)
``spawns_refused_total``                          counter    spawns the policy or per-client limit refused
``output_bytes_total {stream}``                   counter    bytes the agents wrote, stdout and stderr: the
                                                             listed agents' output, plus that of agents no
                                                             longer listed as last seen by a scrape
``requests_received_total``                       counter    requests taken from the socket (all of them)
``refusals_total {reason}``                       counter    requests refused: ``rate_limited``, ``busy``
                                                             (over ``--request-buffer``), ``unauthorized``
                                                             (a CURVE key no longer allowed: dropped)
``auth_total {verdict}``                          counter    CURVE handshakes the ZAP handler ``accepted``
                                                             or ``refused``
``decode_errors_total``                           counter    requests that did not decode (§6.19)
``bad_frames_total``                              counter    messages with a bad envelope (§5.2), dropped
``handler_failures_total``                        counter    handlers that failed and replies too large
``replies_dropped_total``                         counter    replies a client's full queue (or its absence)
                                                             refused
``pub_overflows_total``                           counter    events a subscriber's full queue missed (§5.8)
``disconnects_total``                             counter    request connections that dropped
``handshake_failures_total``                      counter    failed handshakes on the request socket
``held_bytes``                                    gauge      bytes held for requests answered later
``subscribed_topics``                             gauge      topic prefixes subscribed to on the event socket
``stored_bytes``                                  gauge      output bytes in the state directory
``state_max_bytes``                               gauge      the ``--state-max-bytes`` limit
``evicted_agents_total``                          counter    finished agents whose output the budget deleted
``loop_lag_max_seconds``                          gauge      the event loop's worst lateness so far
``loop_stalls_total``                             counter    times the loop was late by more than 5 ms
================================================  =========  ==============================================

The session methods (:meth:`Metrics.restarted`, :meth:`Metrics.session_usage`) take deltas and
are meant to be called on the event loop, like everything else of the server.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["BUCKETS", "Metrics", "Reading", "Requests", "RESULTS"]

log = logging.getLogger("descartes_fast.server.metrics")

P = "descartes_fast_"
#: request_seconds' upper bounds (seconds)
BUCKETS = (50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
           1.0, 2.5, 5.0, 10.0)
#: the values of requests_total's result label
RESULTS = ("ok", "error", "refused")
TOKEN_KINDS = ("input", "output", "cached_input")
_BOUNDS = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]  # (the le labels)
_READ_TIMEOUT = 5.0  # seconds a scrape waits for the event loop


@dataclass(slots=True)
class Reading:
    """What the server counts, read on its event loop when scraped (see ``AgentServer._reading``)."""

    info: dict[str, str]
    agents: dict[str, int]                      # status -> agents listed
    max_agents: int
    output: dict[uuid.UUID, tuple[int, int]]     # agent id -> (stdout, stderr) bytes written
    spawned: int = 0
    spawn_failures: int = 0
    spawns_refused: int = 0
    received: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # rate_limited, busy, unauthorized
    auth: dict[str, int] = field(default_factory=dict)      # accepted, refused
    decode_errors: int = 0
    bad_frames: int = 0
    failures: int = 0
    replies_dropped: int = 0
    pub_overflows: int = 0
    disconnects: int = 0
    handshake_failures: int = 0
    held_bytes: int = 0
    subscribed_topics: int = 0
    stored_bytes: int = 0
    state_max_bytes: int = 0
    evicted_agents: int = 0
    loop_lag_max: float = 0.0                   # seconds
    loop_stalls: int = 0


class Requests:
    """The requests of one message type: how many by result, and their latency histogram."""

    __slots__ = ("buckets", "results", "seconds")

    def __init__(self) -> None:
        self.results = dict.fromkeys(RESULTS, 0)
        self.buckets = [0] * (len(BUCKETS) + 1)  # requests per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0

    def add(self, result: str, seconds: float) -> None:
        """One request answered with *result* after *seconds*."""
        self.results[result] += 1
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds
        self.seconds += seconds


class Metrics:
    """The server's metrics: its registry, the metric objects, and the HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        #: message type -> its requests' counts and latencies (touched on the event loop only, and
        #: read there at scrape time)
        self._requests: dict[str, Requests] = {}
        self._collector = _Collector(self)
        r.register(self._collector)
        self._restarts = Counter(P + "restarts", "Agent sessions restarted, by backend", ["backend"], registry=r)
        self._tokens = Counter(P + "tokens", "Tokens used by agent sessions, by backend and kind (input, output, "
                               "cached_input)", ["backend", "kind"], registry=r)
        self._cost = Counter(P + "cost_usd", "What agent sessions cost, in US dollars, by backend", ["backend"],
                             registry=r)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # -- counted here --

    def of(self, kind: str) -> Requests:
        """The counts of requests of message type *kind* (for a caller that counts many: its ``add``)."""
        requests = self._requests.get(kind)
        if requests is None:
            requests = self._requests[kind] = Requests()
        return requests

    def request(self, kind: str, result: str, seconds: float) -> None:
        """One request of message type *kind* answered with *result* (ok, error, refused) after *seconds*
        (on the event loop)."""
        self.of(kind).add(result, seconds)

    def refused(self, kind: str) -> None:
        """One request of message type *kind* refused before it was decoded (not timed; on the event loop)."""
        self.of(kind).results["refused"] += 1

    def restarted(self, backend: str) -> None:
        """An agent session of *backend* was restarted."""
        self._restarts.labels(backend).inc()

    def session_usage(self, backend: str, input_tokens: int, output_tokens: int, cached_input_tokens: int,
                      cost_usd: float) -> None:
        """Add what an agent session of *backend* used since it was last reported (deltas, never negative;
        ValueError, and nothing added, for a negative one)."""
        amounts = (input_tokens, output_tokens, cached_input_tokens)
        if min(amounts) < 0 or cost_usd < 0:
            raise ValueError(f"session_usage takes deltas of 0 or more, not input_tokens={input_tokens}, "
                             f"output_tokens={output_tokens}, cached_input_tokens={cached_input_tokens}, "
                             f"cost_usd={cost_usd}")
        for kind, amount in zip(TOKEN_KINDS, amounts, strict=True):
            self._tokens.labels(backend, kind).inc(amount)  # (0 too: every kind is there once a backend is)
        self._cost.labels(backend).inc(cost_usd)

    # -- read at scrape time --

    def watch(self, loop: asyncio.AbstractEventLoop, read: Callable[[], Reading]) -> None:
        """Expose the server's own counters: *read* is called on *loop* (which must be the running
        one: call this from it) at every scrape, and the request counts are read there too."""
        self._collector.watch(loop, read)

    # -- the endpoint --

    def serve(self, host: str, port: int) -> str:
        """Serve ``/metrics`` on *host*:*port* (0: a free port) from a daemon thread; returns its URL.
        OSError, naming the address, if it cannot be bound."""
        app = make_wsgi_app(self.registry)

        def routed(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "/") in ("/metrics", "/metrics/"):
                return app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: the metrics are at /metrics\n"]

        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]

            class _Bound(_HTTPServer):
                address_family = family

            httpd = make_server(str(sockaddr[0]), port, routed, _Bound, handler_class=_Quiet)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {shown}: {exc.strerror or exc}") from None
        bound_host, bound_port = httpd.socket.getsockname()[:2]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="descartes-fast-metrics", daemon=True)
        self._thread.start()
        self.url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/metrics"
        return self.url

    def close(self) -> None:
        """Stop serving (waits for the serving thread, a fraction of a second) and stop reading the server."""
        self._collector.closed = True
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class _HTTPServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per scrape, and no reverse DNS lookup of the address at bind time (HTTPServer's
    getfqdn can take seconds where DNS is slow)."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


@dataclass(slots=True)
class _Taken:
    """One scrape's numbers, copied on the event loop."""

    requests: dict[str, tuple[dict[str, int], list[int], float]]  # type -> results, buckets, seconds
    reading: Reading | None = None
    output: tuple[int, int] = (0, 0)  # stdout, stderr bytes


class _Collector:
    """The families counted on the event loop or read from the server, at scrape time (see the
    module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.loop: asyncio.AbstractEventLoop | None = None
        self.read: Callable[[], Reading] | None = None
        self.closed = False
        self._loop_thread = 0
        self._output_gone = [0, 0]  # bytes of the agents no longer listed, as last seen
        self._output_seen: dict[uuid.UUID, tuple[int, int]] = {}
        self._warned = 0.0

    def watch(self, loop: asyncio.AbstractEventLoop, read: Callable[[], Reading]) -> None:
        self.loop, self.read, self._loop_thread = loop, read, threading.get_ident()

    def collect(self) -> Iterator[Metric]:
        taken = self._taken()
        if taken is None:
            return
        yield from self._request_families(taken)
        if taken.reading is not None:
            yield from self._families(taken.reading, taken.output)

    def _taken(self) -> _Taken | None:
        """This scrape's numbers, taken on the event loop when there is one (else here: a Metrics
        that no server watches is fed from this thread or under the GIL's atomic dict copies)."""
        loop = self.loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return self._take()
        if self.closed:
            return None
        future: concurrent.futures.Future[_Taken] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._take())
                except BaseException as exc:
                    future.set_exception(exc)
        try:
            loop.call_soon_threadsafe(take)
            return future.result(_READ_TIMEOUT)
        except RuntimeError:  # the loop is closed: the server is stopping
            return None
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._warn("the event loop did not answer within %.0f s: this scrape has no server metrics",
                       _READ_TIMEOUT)
        except Exception as exc:
            self._warn("reading the server's metrics failed: %s: %s", type(exc).__name__, exc)
        return None

    def _take(self) -> _Taken:
        """Copy the request counts and read the server, carrying the output of agents no longer
        listed into the output totals (on the loop, when there is one)."""
        m = self.metrics
        taken = _Taken({kind: (r.results.copy(), r.buckets[:], r.seconds) for kind, r in m._requests.copy().items()})
        if self.read is None:
            return taken
        reading = taken.reading = self.read()
        seen, gone = self._output_seen, self._output_gone
        for agent_id in seen.keys() - reading.output.keys():
            out, err = seen[agent_id]
            gone[0] += out
            gone[1] += err
        self._output_seen = dict(reading.output)
        taken.output = (gone[0] + sum(v[0] for v in reading.output.values()),
                        gone[1] + sum(v[1] for v in reading.output.values()))
        return taken

    def _warn(self, text: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned >= 60.0:
            self._warned = now
            log.warning(text, *args)

    @staticmethod
    def _request_families(taken: _Taken) -> Iterator[Metric]:
        requests = CounterMetricFamily(P + "requests", "Requests answered, by message type and result (ok, error, "
                                       "refused)", labels=["type", "result"])
        seconds = HistogramMetricFamily(P + "request_seconds", "Seconds from a request's handler starting to its "
                                        "reply being sent, by message type", labels=["type"])
        for kind, (results, in_buckets, total_seconds) in sorted(taken.requests.items()):
            for result, n in results.items():  # (every result, 0 too, once a type has been seen)
                requests.add_metric([kind, result], n)
            if any(in_buckets):
                buckets: list[tuple[str, float]] = []
                total = 0
                for bound, n in zip(_BOUNDS, in_buckets, strict=True):
                    total += n
                    buckets.append((bound, total))
                seconds.add_metric([kind], buckets, sum_value=total_seconds)
        yield requests
        yield seconds

    @staticmethod
    def _families(r: Reading, output: tuple[int, int]) -> Iterator[Metric]:
        out, err = output

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(P + name, help_text, value=value)

        def counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(P + name, help_text, value=value)

        def by(family: type[GaugeMetricFamily | CounterMetricFamily], name: str, help_text: str, label: str,
               values: dict[str, int]) -> GaugeMetricFamily | CounterMetricFamily:
            """A family with one sample per key of *values*, labelled *label*."""
            metric = family(P + name, help_text, labels=[label])
            for key, n in values.items():
                metric.add_metric([key], n)
            return metric

        info = GaugeMetricFamily(P + "server_info", "The server's identity (always 1)", labels=list(r.info))
        info.add_metric(list(r.info.values()), 1)
        yield info
        yield by(GaugeMetricFamily, "agents", "Agents the server lists, by status", "status", r.agents)
        yield gauge("max_agents", "Agents that may be active at once (--max-agents)", r.max_agents)
        yield counter("spawns", "Agents spawned", r.spawned)
        yield counter("spawn_failures", "Spawns that failed (the process or its setup)", r.spawn_failures)
        yield counter("spawns_refused", "Spawns refused by the policy or the per-client limit", r.spawns_refused)
        written = CounterMetricFamily(P + "output_bytes", "Bytes the agents wrote, by stream", labels=["stream"])
        written.add_metric(["stdout"], out)
        written.add_metric(["stderr"], err)
        yield written
        yield counter("requests_received", "Requests taken from the request socket", r.received)
        yield by(CounterMetricFamily, "refusals", "Requests refused, by reason (rate_limited, busy, unauthorized)",
                 "reason", r.refusals)
        yield by(CounterMetricFamily, "auth", "CURVE handshakes, by the ZAP handler's verdict", "verdict", r.auth)
        yield counter("decode_errors", "Requests that did not decode", r.decode_errors)
        yield counter("bad_frames", "Messages with a bad envelope, dropped", r.bad_frames)
        yield counter("handler_failures", "Handlers that failed, and replies too large to send", r.failures)
        yield counter("replies_dropped", "Replies a client's full queue, or its absence, refused", r.replies_dropped)
        yield counter("pub_overflows", "Events a subscriber's full queue missed", r.pub_overflows)
        yield counter("disconnects", "Request connections that dropped", r.disconnects)
        yield counter("handshake_failures", "Failed handshakes on the request socket", r.handshake_failures)
        yield gauge("held_bytes", "Bytes held for requests answered later", r.held_bytes)
        yield gauge("subscribed_topics", "Topic prefixes subscribed to on the event socket", r.subscribed_topics)
        yield gauge("stored_bytes", "Output bytes in the state directory", r.stored_bytes)
        yield gauge("state_max_bytes", "Output bytes the state directory may hold (--state-max-bytes)",
                    r.state_max_bytes)
        yield counter("evicted_agents", "Finished agents whose output the state budget deleted", r.evicted_agents)
        yield gauge("loop_lag_max_seconds", "The event loop's worst lateness so far", r.loop_lag_max)
        yield counter("loop_stalls", "Times the event loop was late by more than 5 ms", r.loop_stalls)
