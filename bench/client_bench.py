"""The client's targets (issue 4): AsyncClient against plain clients, one server, same run.

    python bench/client_bench.py [--quick] [--json OUT]

A descartes-fast-server runs in its own process with one agent; this process is the client.
Each client asks for the agent's status (``get_status``), decodes the reply with our codec,
on loopback TCP:

* ``AsyncClient`` on uvloop (``get_agent_status``);
* raw pyzmq, synchronous: a DEALER, encode, send, receive, decode;
* ``zmq.asyncio`` on uvloop: ``await send_multipart`` / ``await recv_multipart``, one reader
  task resolving futures by request id (the usual way to write an async client).

Targets: throughput with 64 requests in flight >= 3x zmq.asyncio+uvloop; round-trip p50 with
one in flight <= 1.3x raw pyzmq sync.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import uvloop
import zmq
import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, machine, print_targets
from server_bench import OurServer, pct

from descartes_fast.client import AsyncClient, ZmqRunnerConfig
from descartes_fast.wire import codec
from descartes_fast.wire.schema import AgentConfig, ControlCommand, ControlCommandType, SpawnRequest

GET = ControlCommandType.GET_STATUS


# -- AsyncClient ---------------------------------------------------------------------------

async def ours_latency(endpoint: str, agent: uuid.UUID, count: int) -> list[float]:
    async with AsyncClient(ZmqRunnerConfig(endpoint=endpoint, enable_heartbeat=False)) as client:
        for _ in range(200):
            await client.get_agent_status(agent)
        out = []
        for _ in range(count):
            t = time.perf_counter()
            await client.get_agent_status(agent)
            out.append((time.perf_counter() - t) * 1e6)
        return out


async def ours_throughput(endpoint: str, agent: uuid.UUID, total: int, window: int) -> float:
    async with AsyncClient(ZmqRunnerConfig(endpoint=endpoint, enable_heartbeat=False)) as client:
        async def worker(n: int) -> None:
            for _ in range(n):
                await client.get_agent_status(agent)
        await asyncio.gather(*(worker(10) for _ in range(window)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(total // window) for _ in range(window)))
        return (total // window * window) / (time.perf_counter() - started)


# -- raw pyzmq, synchronous ----------------------------------------------------------------

def raw_latency(endpoint: str, agent: uuid.UUID, count: int) -> list[float]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out = []
    for i in range(count + 200):
        t = time.perf_counter()
        sock.send_multipart([b"", codec.encode(ControlCommand(f"r{i}", agent, GET))])
        reply = codec.decode(sock.recv_multipart()[-1])
        assert reply.request_id == f"r{i}"
        if i >= 200:
            out.append((time.perf_counter() - t) * 1e6)
    sock.close()
    return out


# -- zmq.asyncio on uvloop -----------------------------------------------------------------

async def asyncio_client(endpoint: str, agent: uuid.UUID, total: int, window: int,
                         count: int) -> tuple[float, list[float]]:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    pending: dict[str, asyncio.Future] = {}

    async def reader() -> None:
        while True:
            reply = codec.decode((await sock.recv_multipart())[-1])
            pending.pop(reply.request_id).set_result(reply)

    task = asyncio.create_task(reader())
    counter = 0

    async def call() -> None:
        nonlocal counter
        counter += 1
        rid = f"a{counter}"
        future = asyncio.get_running_loop().create_future()
        pending[rid] = future
        await sock.send_multipart([b"", codec.encode(ControlCommand(rid, agent, GET))])
        await future

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(worker(10) for _ in range(window)))
    started = time.perf_counter()
    await asyncio.gather(*(worker(total // window) for _ in range(window)))
    rate = (total // window * window) / (time.perf_counter() - started)
    lat = []
    for _ in range(count):
        t = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t) * 1e6)
    task.cancel()
    sock.close()
    ctx.term()
    return rate, lat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (under 30 s)")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    args = parser.parse_args()
    total, count, reps = (20_000, 3_000, 1) if args.quick else (60_000, 10_000, 3)
    with tempfile.TemporaryDirectory() as tmp:
        server = OurServer(Path(tmp))
        try:
            agent = server.call(SpawnRequest("a", AgentConfig(model_backend="sleep"))).agent_info.id
            thr_ours, thr_aio, lat_ours, lat_raw, lat_aio = [], [], [], [], []
            for _ in range(reps):  # interleaved repeats
                thr_ours.append(uvloop.run(ours_throughput(server.endpoint, agent, total, 64)))
                rate, lat = uvloop.run(asyncio_client(server.endpoint, agent, total // 4, 64, count))
                thr_aio.append(rate)
                lat_aio += lat
                lat_ours += uvloop.run(ours_latency(server.endpoint, agent, count))
                lat_raw += raw_latency(server.endpoint, agent, count)
        finally:
            server.close()
    t_ours, t_aio = statistics.median(thr_ours), statistics.median(thr_aio)
    p = {name: {q: pct(v, q) for q in (50, 99)} for name, v in
         (("ours", lat_ours), ("raw", lat_raw), ("zmq.asyncio", lat_aio))}
    rows = [
        Row("client.throughput", "get_agent_status throughput, 64 in flight (req/s)", t_ours, t_aio,
            "zmq.asyncio + uvloop", t_ours / t_aio),
        Row("client.p50", "get_agent_status round trip p50 (µs)", p["ours"][50], p["raw"][50], "raw pyzmq sync",
            p["ours"][50] / p["raw"][50]),
    ]
    print(machine())
    print_targets(rows, "AsyncClient")
    print("latency µs p50 / p99: " + ", ".join(f"{k} {v[50]:.1f} / {v[99]:.1f}" for k, v in p.items()))
    print(f"throughput req/s: AsyncClient {t_ours:,.0f}, zmq.asyncio+uvloop {t_aio:,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": [r.as_dict() for r in rows],
                                               "latency_us": p, "throughput": {
            "ours": thr_ours, "zmq.asyncio": thr_aio}}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
