"""What a client can make the real server hold is bounded in bytes (README, "Limits"), and the
server stays responsive while clients push at those bounds.

Every test runs the real binary with its default limits and measures its resident memory
before, during and after; a health check from another connection must keep being answered.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.procs import rss_kib
from support.server import Server
from support.waiting import until

from descartes_fast.agents.store import CHUNK_MAX
from descartes_fast.client import AsyncClient, ZmqRunnerConfig
from descartes_fast.server.config import MAX_EVENT_BYTES, ServerConfig
from descartes_fast.wire import codec
from descartes_fast.wire.frames import log_topic, pub_frame
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    ListAgentsRequest,
    LogStreamMessage,
    LogStreamType,
    OutputQueryRequest,
    OutputReadRequest,
    SpawnRequest,
    SpawnResponse,
    ZmqOutputStream,
)
from descartes_fast.wire.texts import busy, retry_after

MiB = 1024


class Sampler:
    """Samples a process's RSS (KiB) and the round trip of health checks on a connection of its
    own, in a thread, until stopped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        sock = self.server.socket(zmq.REQ)
        try:
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_kib(self.server.proc.pid))
                started = time.perf_counter()
                sock.send(codec.encode(HealthCheckRequest("probe")))
                sock.recv()
                self.rtts.append(time.perf_counter() - started)
                time.sleep(0.02)
        finally:
            sock.close()

    def worst(self) -> float:
        return max(self.rtts) if self.rtts else float("inf")


def settle_rss(pid: int, target_kib: int, timeout: float = 10.0) -> int:
    """The RSS once it is at or under *target_kib*, or the lowest seen within *timeout*."""
    lowest = rss_kib(pid)
    deadline = time.monotonic() + timeout
    while lowest > target_kib and time.monotonic() < deadline:
        time.sleep(0.1)
        lowest = min(lowest, rss_kib(pid))
    return lowest


@pytest.fixture
def server(implementation, tmp_path):
    srv = Server(tmp_path, implementation)
    yield srv
    srv.close()


def test_a_subscriber_that_never_reads_costs_at_most_its_pub_buffer(server) -> None:
    # one SUB that never reads while an agent writes 256 MB: the server used to queue every
    # message for it (RSS 31 -> 617 MB for 1 GB, and 466 MB still after it left)
    budget = ServerConfig().pub_buffer // 1024
    idle = server.socket(zmq.SUB, RCVHWM=1, RCVBUF=4096)
    idle.setsockopt(zmq.SUBSCRIBE, b"")
    time.sleep(0.3)  # the subscription reaches the server
    before = rss_kib(server.proc.pid)
    with Sampler(server) as sampler:
        agent = server.spawn("sh", "head -c 256000000 /dev/zero | tr '\\0' '\\377'")
        server.wait_status(agent, (AgentStatus.COMPLETED,), timeout=240)
        time.sleep(0.5)
    grown = sampler.peak - before
    health = server.call(HealthCheckRequest("after"))
    assert int(health.metadata["pub_overflows"]) > 0  # what did not fit was dropped, and said
    assert grown < budget + 40 * MiB, (grown, budget)
    assert sampler.worst() < 1.0, sampler.worst()  # answered throughout
    idle.close()
    after = settle_rss(server.proc.pid, before + 16 * MiB)
    assert after < before + 16 * MiB, (before, sampler.peak, after)
    print(f"slow subscriber: RSS {before // MiB} -> peak {sampler.peak // MiB} -> {after // MiB} MiB "
          f"(--pub-buffer {budget // MiB} MiB); {health.metadata['pub_overflows']} overflows; "
          f"health round trip worst {sampler.worst() * 1e3:.1f} ms over {len(sampler.rtts)}")


def test_the_largest_event_fits_the_size_the_pub_queue_is_counted_in() -> None:
    # the event queue's message count comes from --pub-buffer / MAX_EVENT_BYTES: no event may be larger
    agent = uuid.uuid4()
    worst = LogStreamMessage(agent, LogStreamType.STDERR, b"\xff" * CHUNK_MAX, 2**63 - 1, 2**63 - 1)
    assert len(pub_frame(log_topic(agent), codec.encode(worst))) <= MAX_EVENT_BYTES
    assert ServerConfig(pub_buffer=MAX_EVENT_BYTES * 3 + 1).pub_hwm == 3


def test_a_flood_of_large_requests_costs_at_most_the_request_buffer_and_each_is_answered(server) -> None:
    # 300 spawn requests of 9 MB each, sent as fast as the socket takes them, replies unread until
    # the end: the server used to take every one it could read and hold each until its spawn ran
    # (RSS 35 -> 481 MB); now libzmq queues at most --request-buffer of them and the server holds at
    # most --request-buffer more, answering the rest 'busy: ... retry after N ms' at once
    budget = ServerConfig().request_buffer // 1024
    big = codec.encode(SpawnRequest("s", AgentConfig(name="big", model_backend="nope", task="x" * 9_000_000)))
    flood = server.socket(zmq.DEALER, SNDHWM=0, RCVHWM=0)
    before = rss_kib(server.proc.pid)
    with Sampler(server) as sampler:
        for _ in range(300):
            flood.send_multipart([b"", big])
        replies = [codec.decode(flood.recv_multipart()[-1]) for _ in range(300)]
    flood.close()
    texts = [r.error for r in replies]
    assert all(isinstance(r, SpawnResponse) and not r.success for r in replies)
    busy = [t for t in texts if t.startswith("busy: ")]  # how many depends on how fast spawns fail
    assert all("retry after 20 ms" in t and "(--request-buffer)" in t for t in busy), texts[:3]
    assert all(t.startswith(("busy: ", "Agent spawn failed: Unsupported model backend")) for t in texts), set(texts)
    grown = sampler.peak - before
    assert grown < 2 * budget + 48 * MiB, (grown, budget)
    assert sampler.worst() < 2.0, sampler.worst()
    health = server.call(HealthCheckRequest("after"))
    assert int(health.metadata["busy_refused"]) == len(busy) and health.metadata["held_bytes"] == "0"
    print(f"request flood: RSS {before // MiB} -> peak {sampler.peak // MiB} MiB (--request-buffer "
          f"{budget // MiB} MiB); {len(busy)} of 300 answered busy; health round trip worst "
          f"{sampler.worst() * 1e3:.1f} ms")


def test_a_busy_reply_is_waited_out_and_retried_by_our_client(implementation, tmp_path) -> None:
    # with the smallest --request-buffer (one 10 MiB message) 40 reads of 4 MiB pages at once
    # cannot all be held: those over it are answered 'busy', and AsyncClient retries them itself
    assert retry_after(busy("key:ci", 5, 10, 20)) == 0.02
    server = Server(tmp_path, implementation, "--request-buffer", "10MiB")
    try:
        agent = server.spawn("py", "import sys; sys.stdout.write('y' * 9_000_000 + '\\n')")
        server.wait_status(agent, (AgentStatus.COMPLETED,))

        async def read_all() -> tuple[list[int], int]:
            config = ZmqRunnerConfig(endpoint=server.bind, pub_endpoint=server.pub, enable_heartbeat=False)
            async with AsyncClient(config) as c:
                pages = await asyncio.gather(*(c.read_output(agent, LogStreamType.STDOUT, offset=i * 100_000,
                                                             max_bytes=4 << 20) for i in range(40)))
                return [len(p.data) for p in pages], c.rate_limited

        sizes, retried = asyncio.run(read_all())
        assert all(size > 0 for size in sizes) and retried > 0
        health = server.call(HealthCheckRequest("after"))
        assert int(health.metadata["busy_refused"]) >= retried and health.metadata["held_bytes"] == "0"
    finally:
        server.close()


# -- random abuse: every request answered once, memory within the budgets --

_WRITERS = {
    "echo": "print('hello'); print('a' * 40)",
    "bytes": "import sys; [sys.stdout.buffer.write(b'\\xff' * 65535 + b'\\n') for _ in range(300)]",
    "lines": "import sys; sys.stdout.write(''.join(f'{i} aaaa\\n' for i in range(400_000)))",
    "sleeper": "import time; time.sleep(30)",
}
_FILTERS = (None, "(a+)+$", "aaaa$", r"(a)\1", "[", "(?=a)", ".*", "^9")
_actions = st.lists(st.one_of(
    st.tuples(st.just("health")),
    st.tuples(st.just("list")),
    st.tuples(st.just("spawn"), st.sampled_from(sorted(_WRITERS))),
    st.tuples(st.just("status"), st.integers(0, 8)),
    st.tuples(st.just("query"), st.integers(0, 8), st.sampled_from(_FILTERS),
              st.sampled_from([None, 1, 1000, 100_000])),
    st.tuples(st.just("read"), st.integers(0, 8), st.sampled_from([None, 0, 1 << 20, 1 << 62]),
              st.sampled_from([None, 1, 4 << 20, 1 << 40])),
    st.tuples(st.just("stdin"), st.integers(0, 8), st.sampled_from([1, 1000, 2 << 20, 9_000_000])),
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
    st.tuples(st.just("burst"), st.integers(50, 400)),
    st.tuples(st.just("queries"), st.integers(1, 40), st.integers(0, 8)),
    st.tuples(st.just("large"), st.integers(1, 20)),
    st.tuples(st.just("slow_subscriber")),
), min_size=1, max_size=12)


def test_random_abuse_gets_one_reply_per_request_and_stays_in_its_budgets(implementation, tmp_path) -> None:
    # a rate limit low enough for a burst to reach it; every other limit is the default
    server = Server(tmp_path, implementation, "--rate-limit", "2000")
    defaults = ServerConfig()
    agents: list[uuid.UUID] = []
    subscribers: list[zmq.Socket] = []
    client = server.socket(zmq.DEALER, SNDHWM=0, RCVHWM=0, RCVTIMEO=20_000)
    baseline = rss_kib(server.proc.pid)
    # per client: the request queue and what deferred answers hold; per slow subscriber its queue;
    # per agent its output tail in memory (40 at most, the test config's max_agents); and slack
    budget = (2 * defaults.request_buffer + 2 * defaults.pub_buffer + 40 * defaults.output_limit) // 1024 + 64 * MiB
    sent = 0
    ids = iter(range(10**9))

    def send(message: object) -> None:
        nonlocal sent
        client.send_multipart([b"", codec.encode(message)])
        sent += 1

    def agent(i: int) -> uuid.UUID:
        return agents[i % len(agents)] if agents and i else uuid.uuid4()

    @settings(max_examples=int(12 * float(os.environ.get("DESCARTES_FUZZ_SCALE", "1"))),
              deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.reuse, Phase.generate])  # a missing reply costs RCVTIMEO: no shrinking
    @given(actions=_actions)
    def run(actions: list[tuple]) -> None:
        nonlocal sent
        sent = 0
        spawned: list[str] = []
        for action in actions:
            kind, *args = action
            rid = f"r{next(ids)}"
            if kind == "health":
                send(HealthCheckRequest(rid))
            elif kind == "list":
                send(ListAgentsRequest(rid))
            elif kind == "spawn":
                send(SpawnRequest(rid, AgentConfig(name=args[0], model_backend="py", task=_WRITERS[args[0]])))
                spawned.append(rid)
            elif kind == "status":
                send(ControlCommand(rid, agent(args[0]), ControlCommandType.GET_STATUS))
            elif kind == "query":
                send(OutputQueryRequest(rid, agent(args[0]), ZmqOutputStream.BOTH, args[1], args[2]))
            elif kind == "read":
                send(OutputReadRequest(rid, agent(args[0]), LogStreamType.STDOUT, offset=args[1], max_bytes=args[2]))
            elif kind == "stdin":
                send(ControlCommand(rid, agent(args[0]), ControlCommandType.WRITE_STDIN, {"data": "z" * args[1]}))
            elif kind == "garbage":
                client.send_multipart([b"", args[0]])
                sent += 1
            elif kind == "burst":
                for j in range(args[0]):
                    send(HealthCheckRequest(f"{rid}.{j}"))
            elif kind == "queries":  # more at once than the request buffer holds answers for
                for j in range(args[0]):
                    send(OutputQueryRequest(f"{rid}.{j}", agent(args[1]), ZmqOutputStream.BOTH, None, 10))
            elif kind == "large":
                for j in range(args[0]):
                    send(SpawnRequest(f"{rid}.{j}", AgentConfig(name="l", model_backend="nope", task="x" * 9_000_000)))
            elif kind == "slow_subscriber" and len(subscribers) < 2:
                sub = server.socket(zmq.SUB, RCVHWM=1, RCVBUF=4096)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                subscribers.append(sub)
        replies = []
        for _ in range(sent):  # exactly one reply each (RCVTIMEO: a missing one fails here)
            replies.append(codec.decode(client.recv_multipart()[-1]))
        assert not client.poll(300), "a request was answered twice"
        answered = {getattr(r, "request_id", None) for r in replies}
        for r in replies:
            if isinstance(r, SpawnResponse) and r.success and r.request_id in spawned:
                agents.append(r.agent_info.id)
        assert all(rid in answered for rid in spawned)
        used = rss_kib(server.proc.pid) - baseline
        assert used < budget, (used, budget)

    try:
        run()
        probe = server.socket(zmq.REQ)
        started = time.perf_counter()
        probe.send(codec.encode(HealthCheckRequest("end")))
        assert codec.decode(probe.recv()).healthy and time.perf_counter() - started < 5
        assert "Traceback" not in server.log()
    finally:
        for sub in subscribers:
            sub.close()
        server.close()


def test_large_replies_a_client_does_not_read_count_against_its_request_buffer(server) -> None:
    # list_agents of 600 agents with a 200-byte task is ~160 KB; 2,000 of them, never read, used to
    # wait in libzmq's reply queue (10,000 replies per client) whatever their size: 320 MB here
    finished = []
    for _ in range(600):
        finished.append(server.spawn("sh", "true " + "x" * 200))
    until(lambda: server.control(finished[-1], ControlCommandType.GET_STATUS).status == AgentStatus.COMPLETED)
    lister = server.socket(zmq.DEALER, RCVHWM=1, RCVBUF=4096, SNDHWM=0)
    budget = ServerConfig().request_buffer // 1024
    before = rss_kib(server.proc.pid)
    requests = int(server.call(HealthCheckRequest("n")).metadata["requests"])
    with Sampler(server) as sampler:
        for i in range(2000):
            lister.send_multipart([b"", codec.encode(ListAgentsRequest(f"l{i}"))])
        # the server answers every one (the lister reads nothing yet): wait until it has them all
        until(lambda: int(server.call(HealthCheckRequest("n")).metadata["requests"]) > requests + 2000,
              timeout=120)
    grown = sampler.peak - before
    replies = [codec.decode(lister.recv_multipart()[-1]) for _ in range(2000)]
    busy = [r for r in replies if not r.success]
    assert busy and all(r.error.startswith("busy: ") for r in busy), replies[-1]
    assert all(len(r.agents) == 600 for r in replies if r.success)
    assert grown < budget + 64 * MiB, (grown, budget)
    assert server.call(HealthCheckRequest("after")).metadata["held_bytes"] == "0"
