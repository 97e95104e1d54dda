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
from descartes_fast.wire.schema import AgentStatus, HealthCheckRequest

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
