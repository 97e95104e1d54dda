"""The fleet's scaling (issue 15): one ``Fleet`` driving N = 1, 2, 4 servers on this machine.

    python bench/fleet_bench.py [--quick] [--json OUT]

For each N, in the same run: the aggregate spawn rate (``/bin/true``, 64 spawns in flight
through the fleet, placed by its policy) and control throughput (``get_status`` through
``Fleet.status``-style calls, 64 in flight), each as a ratio of N x the single-server figure
measured in this run; and the latency of a fleet-wide ``agents()`` (a list from every server)
with 50 agents per server. Then the client's own bookkeeping at 100 servers x 1,000 agents,
simulated (each server's client replaced by an in-memory fake that answers lists and
statuses; heartbeats fed by hand): the memory the fleet holds for it, and the latency of
``agents()``, ``known()``, ``locate()`` by id prefix and ``status()``.

Every server is a separate process on loopback TCP; this machine's cores are shared by them
all and by this client, so N servers cannot go N times as fast here: the ratio says how much
of a core's worth each added server gets. Not a target in bench/targets.toml (the figures go
in the issue's note); the cores are printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_bench import OurServer

from descartes_fast.client.config import ZmqRunnerConfig
from descartes_fast.fleet import Fleet, ServerSpec
from descartes_fast.fleet.fleet import ServerState, _Member
from descartes_fast.wire.schema import AgentConfig, AgentInfo, AgentStatus

WINDOW = 64


async def _windowed(calls: list[Any], window: int = WINDOW) -> float:
    """Run the coroutine factories *calls* with *window* in flight; seconds taken."""
    queue = list(reversed(calls))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await queue.pop()()
    await asyncio.gather(*(worker() for _ in range(window)))
    return time.perf_counter() - started


async def measure(servers: list[OurServer], spawns: int, statuses: int) -> dict[str, float]:
    specs = [ServerSpec(f"s{i}", s.endpoint) for i, s in enumerate(servers)]
    config = ZmqRunnerConfig(request_timeout_secs=60, connection_timeout_secs=30)
    async with Fleet(specs, config) as fleet:
        true = AgentConfig(name="t", model_backend="true", task="")
        secs = await _windowed([lambda: fleet.spawn(true) for _ in range(spawns)])
        spawn_rate = spawns / secs
        sleepers = [await fleet.spawn(AgentConfig(name=f"z{i}", model_backend="sleep", task=""),
                                      server=f"s{i % len(servers)}") for i in range(50 * len(servers))]
        located = [await fleet.client_of(a.id) for a in sleepers]
        calls = [lambda c=c, i=i: c.agent_state(i) for c, i in located] * (statuses // len(located) + 1)
        secs = await _windowed(calls[:statuses])
        control = statuses / secs
        lists = []
        for _ in range(20):
            started = time.perf_counter()
            await fleet.agents()
            lists.append(time.perf_counter() - started)
        for a in sleepers:
            client, agent_id = await fleet.client_of(a.id)
            await client.kill_agent(agent_id)
    return {"spawn_rate": spawn_rate, "control": control, "list_ms": statistics.median(lists) * 1e3}


class _FakeClient:
    """What a member's AsyncClient answers, in memory (the bookkeeping alone is measured)."""

    def __init__(self, agents: list[AgentInfo]) -> None:
        self.agents = agents
        self.server_metadata: dict[str, str] = {}

    async def list_remote_agents(self, status: AgentStatus | None = None, limit: int | None = None) -> list[AgentInfo]:
        return self.agents

    async def agent_state(self, agent_id: uuid.UUID) -> dict[str, Any]:
        return {"status": "Running", "pid": 1, "exit_code": None, "ended_at": None}

    async def disconnect(self) -> None:
        pass


async def simulate(servers: int, per_server: int) -> dict[str, float]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fleet = Fleet([], ZmqRunnerConfig())
    now = time.time_ns()
    for s in range(servers):
        infos = [AgentInfo(uuid.uuid4(), f"agent-{s}-{i}", AgentStatus.RUNNING, "claude", now, "a task of a few words")
                 for i in range(per_server)]
        member = _Member(ServerSpec(f"server-{s}", f"tcp://10.0.{s // 250}.{s % 250}:5555"), _FakeClient(infos))  # type: ignore[arg-type]
        member.agents = {a.id: a for a in infos}
        member.state = ServerState.UP
        member.facts = {"active_agents": per_server, "max_agents": 2000, "load_1m": 0.5, "cpus": 8,
                        "memory_available_bytes": 8 << 30, "backends": ["claude"], "labels": {}}
        member.last_seen = time.monotonic()
        fleet._members[member.name] = member
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    out = {"memory_mib": held / (1 << 20)}
    pick = next(iter(fleet._members["server-57"].agents))
    for name, make, n in (("agents_ms", lambda: fleet.agents(), 5),
                          ("locate_ms", lambda: fleet.locate(str(pick)[:8]), 200),
                          ("status_ms", lambda: fleet.status(pick), 200)):
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await make()
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times) * 1e3
    times = []
    for _ in range(20):
        started = time.perf_counter()
        fleet.known()
        times.append(time.perf_counter() - started)
    out["known_ms"] = statistics.median(times) * 1e3
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    args = parser.parse_args()
    spawns, statuses = (200, 5_000) if args.quick else (600, 20_000)
    results: dict[str, Any] = {"cores": os.cpu_count(), "by_n": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 4):
            servers = [OurServer(Path(tmp), rate_limit="0") for _ in range(n)]
            try:
                results["by_n"][n] = asyncio.run(measure(servers, spawns, statuses))
            finally:
                for s in servers:
                    s.close()
    one = results["by_n"][1]
    print(f"{os.cpu_count()} cores here, shared by the N servers and this client")
    print(f"{'N':>2}  {'spawns/s':>9}  {'ratio':>6}  {'get_status/s':>12}  {'ratio':>6}  {'agents() ms':>11}")
    for n, r in results["by_n"].items():
        r["spawn_ratio"] = r["spawn_rate"] / (n * one["spawn_rate"])
        r["control_ratio"] = r["control"] / (n * one["control"])
        print(f"{n:>2}  {r['spawn_rate']:>9,.0f}  {r['spawn_ratio']:>6.2f}  {r['control']:>12,.0f}  "
              f"{r['control_ratio']:>6.2f}  {r['list_ms']:>11.2f}")
    sim = results["simulated"] = asyncio.run(simulate(100, 1_000))
    print(f"simulated 100 servers x 1,000 agents: {sim['memory_mib']:.1f} MiB held; agents() "
          f"{sim['agents_ms']:.1f} ms, known() {sim['known_ms']:.1f} ms, locate(prefix) {sim['locate_ms']:.2f} ms, "
          f"status() {sim['status_ms']:.2f} ms (medians)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
