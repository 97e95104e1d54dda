"""What a client can make the real server hold is bounded in bytes (README, "Limits"), and the
server stays responsive while clients push at those bounds.

Every test runs the real binary with its default limits and measures its resident memory
before, during and after; a health check from another connection must keep being answered.
"""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from support.procs import rss_kib
from support.server import Server

from descartes_fast.server.config import ServerConfig
from descartes_fast.wire import codec
from descartes_fast.wire.schema import AgentConfig, AgentStatus, HealthCheckRequest, SpawnRequest, SpawnResponse

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
    import uuid

    from descartes_fast.agents.store import CHUNK_MAX
    from descartes_fast.server.config import MAX_EVENT_BYTES
    from descartes_fast.wire.frames import log_topic, pub_frame
    from descartes_fast.wire.schema import LogStreamMessage, LogStreamType

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
    busy = [t for t in texts if t.startswith("busy: ")]
    assert busy and all("retry after 20 ms" in t and "(--request-buffer)" in t for t in busy), texts[:3]
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
    import asyncio

    from descartes_fast.client import AsyncClient, ZmqRunnerConfig
    from descartes_fast.wire.schema import LogStreamType
    from descartes_fast.wire.texts import busy, retry_after

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
