"""Health-check latency while clients abuse the server, and memory per slow subscriber (issue 14).

    python bench/abuse_bench.py [--quick] [--json OUT]

One descartes-fast-server on loopback TCP with its default limits (as every benchmark server,
``--max-agents 5000 --stop-grace 1``). For each abuse, an abuser
process (``--role``) does its worst for a few seconds while this process sends a
``health_check`` every 10 ms on a connection of its own and times each round trip:

* ``idle``: nothing else (the baseline the others are read against);
* ``slow_subscriber``: an agent writes as fast as it can while a SUB never reads;
* ``request_flood``: 9 MB spawn requests sent as fast as the socket takes them, replies unread;
* ``pipelining``: one DEALER keeps 1,000 requests in flight;
* ``regex``: ``output_query`` with the backtracking filter ``(a+)+$`` over 400,000 lines, 8 in flight;
* ``stdin_flood``: 9 MB stdin writes to an agent that never reads them.

Target: health p99 <= 5 ms under each (the row's ratio is p99 / 5 ms). Then the server's RSS
growth with 1 and 4 subscribers that never read, per subscriber, against ``--pub-buffer``
(target: <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, machine, print_targets
from server_bench import OurServer, _port

from descartes_fast.server.config import ServerConfig
from descartes_fast.wire import codec
from descartes_fast.wire.schema import (
    AgentConfig,
    ControlCommand,
    ControlCommandType,
    HealthCheckRequest,
    OutputQueryRequest,
    SpawnRequest,
    ZmqOutputStream,
)

HERE = Path(__file__).resolve()
P99_FLOOR_MS = 5.0
ABUSES = ("idle", "slow_subscriber", "request_flood", "pipelining", "regex", "stdin_flood")


class Server(OurServer):
    """descartes-fast-server with its default limits (but --max-agents and --stop-grace, as every
    benchmark server), an event socket, and a shell backend whose agents keep stdin open."""

    def __init__(self, tmp: Path) -> None:
        self.pub = f"tcp://127.0.0.1:{_port()}"
        super().__init__(tmp, pub=self.pub, backends='[backends.sh]\ncommand = ["sh", "-c", "{task}"]\n')

    def spawn(self, backend: str, task: str) -> uuid.UUID:
        reply = self.call(SpawnRequest("s", AgentConfig(name="abuse", model_backend=backend, task=task)))
        assert reply.success, reply.error
        return reply.agent_info.id


# -- abusers (child processes: ``--role NAME ENDPOINT [AGENT]``, until killed) --

def abuse(role: str, endpoint: str, agent: str | None) -> None:
    ctx = zmq.Context()
    if role == "slow_subscriber":
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 1)
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        time.sleep(3600)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.setsockopt(zmq.RCVHWM, 0)
    dealer.connect(endpoint)
    if role == "request_flood":
        big = codec.encode(SpawnRequest("f", AgentConfig(name="f", model_backend="nope", task="x" * 9_000_000)))
        while True:
            dealer.send_multipart([b"", big])
    if role == "stdin_flood":
        write = codec.encode(ControlCommand("w", uuid.UUID(agent), ControlCommandType.WRITE_STDIN,
                                            {"data": "z" * 9_000_000}))
        while True:
            dealer.send_multipart([b"", write])
            dealer.recv_multipart()
    if role == "pipelining":
        payload, in_flight = codec.encode(HealthCheckRequest("p")), 1000
    else:  # regex
        assert agent is not None
        query = OutputQueryRequest("q", uuid.UUID(agent), ZmqOutputStream.STDOUT, "(a+)+$", 10)
        payload, in_flight = codec.encode(query), 8
    for _ in range(in_flight):
        dealer.send_multipart([b"", payload])
    while True:
        dealer.recv_multipart()
        dealer.send_multipart([b"", payload])


def probe(server: Server, seconds: float) -> list[float]:
    """Health round trips (ms), one every 10 ms for *seconds*, on a connection of its own."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    sock.connect(server.endpoint)
    payload = codec.encode(HealthCheckRequest("probe"))
    out: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        sock.send(payload)
        sock.recv()
        out.append((time.perf_counter() - started) * 1e3)
        time.sleep(0.01)
    sock.close()
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _abuser(role: str, endpoint: str, agent: uuid.UUID | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), "--role", role, endpoint, str(agent or "")])


def latency(tmp: Path, seconds: float, only: list[str] | None = None) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name in only or ABUSES:
        server = Server(tmp)
        procs: list[subprocess.Popen] = []
        try:
            if name == "slow_subscriber":
                procs.append(_abuser(name, server.pub))
                time.sleep(0.5)
                server.spawn("sh", "head -c 20000000000 /dev/zero | tr '\\0' '\\377'")
            elif name == "regex":
                agent = server.spawn("python", "import sys; sys.stdout.write(('a' * 30 + '!\\n') * 400000)")
                time.sleep(2)
                procs.append(_abuser(name, server.endpoint, agent))
            elif name == "stdin_flood":
                procs.append(_abuser(name, server.endpoint, server.spawn("sh", "sleep 600")))
            elif name != "idle":
                procs.append(_abuser(name, server.endpoint))
            time.sleep(1.0)  # the abuse is under way
            before = server.rss_kib()
            rtts = probe(server, seconds)
            health = server.call(HealthCheckRequest("after")).metadata
            results[name] = {"p50_ms": statistics.median(rtts), "p99_ms": p99(rtts), "max_ms": max(rtts),
                             "probes": len(rtts), "rss_mib": before / 1024,
                             "counters": {k: health[k] for k in ("rate_limited", "busy_refused", "pub_overflows",
                                                                 "loop_stalls", "loop_lag_max_ms")}}
        finally:
            for p in procs:
                p.kill()
                p.wait()
            server.close()
        print(f"abuse_bench: {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    return results


def subscriber_memory(tmp: Path, counts: tuple[int, ...] = (1, 4)) -> dict:
    """RSS growth per subscriber that never reads, while an agent writes 2 GB, against --pub-buffer."""
    out: dict = {"pub_buffer_mib": ServerConfig().pub_buffer / 2**20}
    for n in counts:
        server = Server(tmp)
        try:
            base = server.rss_kib()
            subs = [_abuser("slow_subscriber", server.pub) for _ in range(n)]
            time.sleep(1.0)
            server.spawn("sh", "head -c 2000000000 /dev/zero | tr '\\0' '\\377'")
            peak, end = base, time.monotonic() + 15
            while time.monotonic() < end:
                peak = max(peak, server.rss_kib())
                time.sleep(0.05)
            for p in subs:
                p.kill()
                p.wait()
            time.sleep(2.0)
            out[str(n)] = {"base_mib": base / 1024, "peak_mib": peak / 1024, "after_mib": server.rss_kib() / 1024,
                           "growth_per_subscriber_mib": (peak - base) / 1024 / n}
        finally:
            server.close()
        print(f"abuse_bench: {n} slow subscriber(s): {json.dumps(out[str(n)])}", file=sys.stderr, flush=True)
    return out


def rows(lat: dict[str, dict], memory: dict) -> list[Row]:
    table = [Row(f"abuse.health_p99_{name}", f"health_check p99 during {name.replace('_', ' ')}, ms",
                 lat[name]["p99_ms"], P99_FLOOR_MS, "the 5 ms floor", lat[name]["p99_ms"] / P99_FLOOR_MS)
             for name in ABUSES]
    worst = max(memory[k]["growth_per_subscriber_mib"] for k in memory if k.isdigit())
    table.append(Row("abuse.slow_subscriber_memory", "server RSS growth per subscriber that never reads, MiB",
                     worst, memory["pub_buffer_mib"], "--pub-buffer (default)", worst / memory["pub_buffer_mib"]))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per abuse instead of 8")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    parser.add_argument("--only", action="append", choices=ABUSES, metavar="ABUSE",
                        help=f"measure only this abuse (repeatable; no table): {', '.join(ABUSES)}")
    parser.add_argument("--role", nargs=3, metavar=("ROLE", "ENDPOINT", "AGENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        abuse(args.role[0], args.role[1], args.role[2] or None)
        return 0
    if args.only:
        with tempfile.TemporaryDirectory() as where:
            for name, r in latency(Path(where), 3.0 if args.quick else 8.0, args.only).items():
                print(f"{name}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms")
        return 0
    with tempfile.TemporaryDirectory() as where:
        lat = latency(Path(where), 3.0 if args.quick else 8.0)
        memory = subscriber_memory(Path(where))
    table = rows(lat, memory)
    print(machine())
    print_targets(table)
    for name in ABUSES:
        r = lat[name]
        print(f"{name}: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms over "
              f"{r['probes']} probes; {r['counters']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": [r.as_dict() for r in table],
                                               "latency": lat, "subscriber_memory": memory}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
