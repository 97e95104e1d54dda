"""Live output through ``follow_logs``, lossless, against a minimal relay (issue 17).

    python bench/live_bench.py [--quick] [--json OUT]

One writer (a Python program writing 100-byte lines in blocks of 1 MB to stdout, as fast as it
can; 1 GB, 200 MB with --quick) is followed by 1 and then by 8 subscribers, each a process of
its own that hashes every byte it receives:

* ours: the writer runs as an agent of a descartes-fast-server; each subscriber is an
  ``AsyncClient`` (uvloop) in ``follow_logs`` from the first byte: every chunk exactly once, read
  from the store when the live stream could not keep up.
* reference: the benchmark's own relay, a plain Python loop that reads the writer's pipe in
  64 KiB reads and publishes each read as one MessagePack ``bin`` message on a pyzmq PUB (no
  queue limit, so nothing is dropped); each subscriber is a plain SUB.

Both writers wait for a file before writing, made once every subscriber is ready; before each
of ours, the store's earlier output is written back and out of the page cache. Measured:
MB/s from that moment until the slowest subscriber has every byte, each subscriber's sha256
checked against the writer's own. Rounds interleave ours and the relay; the medians are
reported, and the ratios against the targets in ``bench/targets.toml``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, machine, print_targets, settle
from server_bench import OurServer, _port

from descartes_fast.wire.schema import AgentConfig, SpawnRequest

HERE = Path(__file__).resolve()
MB = 1_000_000
LINE = b"x" * 99 + b"\n"
READ = 64 * 1024  # the relay's read size


def writer(blocks: int, gate: Path, sha: Path) -> str:
    """The writer: waits for *gate*, writes *blocks* MB of LINE, then its sha256 into *sha*."""
    return (f"import hashlib, os, sys, time\n"
            f"while not os.path.exists({str(gate)!r}): time.sleep(0.001)\n"
            f"b = {LINE!r} * 10_000\nw = sys.stdout.buffer.write\n"
            f"for _ in range({blocks}): w(b)\nsys.stdout.flush()\n"
            f"open({str(sha)!r}, 'w').write(hashlib.sha256(b * {blocks}).hexdigest())\n")


# -- the subscribers (each in a process of its own: --role) --

def follower(endpoint: str, pub: str, agent: str) -> None:
    """Ours: follow_logs from the first byte to the agent's end; prints sha256, bytes, end time."""
    import uuid

    import uvloop

    from descartes_fast.client import AsyncClient, ZmqRunnerConfig

    async def run() -> None:
        config = ZmqRunnerConfig(endpoint=endpoint, pub_endpoint=pub, request_timeout_secs=30)
        async with AsyncClient(config) as client:
            replay = await client.follow_logs(uuid.UUID(agent))
            print("ready", flush=True)
            h, n = hashlib.sha256(), 0
            async for chunk in replay:
                h.update(chunk.data)
                n += len(chunk.data)
            print(json.dumps({"sha": h.hexdigest(), "bytes": n, "end": time.monotonic()}), flush=True)

    uvloop.run(run())


def plain_sub(endpoint: str) -> None:
    """The reference: a plain SUB until the relay's empty end message; prints sha256, bytes, end time."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    print("ready", flush=True)
    h, n = hashlib.sha256(), 0
    while True:
        data = msgpack.unpackb(sock.recv(copy=False).buffer)
        if not data:
            break
        h.update(data)
        n += len(data)
    print(json.dumps({"sha": h.hexdigest(), "bytes": n, "end": time.monotonic()}), flush=True)


def relay(endpoint: str, subscribers: int, script: str) -> None:
    """The reference relay: waits for *subscribers* subscriptions, runs the writer, publishes each 64 KiB read."""
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.bind(endpoint)
    for _ in range(subscribers):
        sock.recv()  # a subscription
    print("ready", flush=True)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while data := os.read(fd, READ):
        sock.send(msgpack.packb(data))
    sock.send(msgpack.packb(b""))
    proc.wait()
    sock.close(linger=-1)
    zmq.Context.instance().term()  # (waits until every queued message is sent: exiting would drop them)


def _role(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE), "--role", *args], stdout=subprocess.PIPE, text=True)


def _ready(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"live_bench: a subscriber did not start ({line!r})")


def _results(procs: list[subprocess.Popen], want: str, size: int) -> float:
    """The slowest subscriber's end time, after checking every one got every byte."""
    ends = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        got = json.loads(out.strip().splitlines()[-1])
        if got["sha"] != want or got["bytes"] != size:
            raise SystemExit(f"live_bench: a subscriber got {got['bytes']} bytes, sha256 {got['sha'][:12]}..., "
                             f"not the {size} bytes written")
        ends.append(got["end"])
    return max(ends)


def ours_round(server: OurServer, tmp: Path, blocks: int, subscribers: int) -> float:
    settle(server.state)
    gate, sha = tmp / f"gate-{time.monotonic_ns()}", tmp / f"sha-{time.monotonic_ns()}"
    reply = server.call(SpawnRequest("live", AgentConfig(model_backend="python", task=writer(blocks, gate, sha))))
    assert reply.success, reply.error
    subs = [_role("follow", server.endpoint, server.pub, str(reply.agent_info.id)) for _ in range(subscribers)]
    _ready(subs)
    time.sleep(0.2)  # (the follows' subscriptions reach the server)
    started = time.monotonic()
    gate.touch()
    end = _results(subs, _wait_text(sha), blocks * MB)
    return blocks / (end - started)


def relay_round(tmp: Path, blocks: int, subscribers: int) -> float:
    gate, sha = tmp / f"gate-{time.monotonic_ns()}", tmp / f"sha-{time.monotonic_ns()}"
    endpoint = f"tcp://127.0.0.1:{_port()}"
    pub = _role("relay", endpoint, str(subscribers), writer(blocks, gate, sha))
    subs = [_role("sub", endpoint) for _ in range(subscribers)]
    _ready(subs)
    _ready([pub])
    started = time.monotonic()
    gate.touch()
    end = _results(subs, _wait_text(sha), blocks * MB)
    pub.wait(60)
    return blocks / (end - started)


def _wait_text(path: Path) -> str:
    deadline = time.monotonic() + 600
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit("live_bench: the writer did not finish")
        time.sleep(0.01)
    return path.read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 MB, two rounds (about a minute)")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "follow":
            follower(*rest)
        elif role == "sub":
            plain_sub(*rest)
        else:
            relay(rest[0], int(rest[1]), rest[2])
        return 0
    blocks, rounds = (200, 2) if args.quick else (1000, 3)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as where:
        tmp = Path(where)
        server = OurServer(tmp, pub=f"tcp://127.0.0.1:{_port()}", log_max_bytes="4GiB", state_max_bytes="16GiB")
        try:
            for subscribers in (1, 8):
                case = results[f"subscribers_{subscribers}"] = {"ours_mb_s": [], "relay_mb_s": []}
                for _ in range(rounds):
                    case["ours_mb_s"].append(ours_round(server, tmp, blocks, subscribers))
                    case["relay_mb_s"].append(relay_round(tmp, blocks, subscribers))
                    print(f"live_bench: {subscribers} subscriber(s): ours {case['ours_mb_s'][-1]:.0f} MB/s, "
                          f"relay {case['relay_mb_s'][-1]:.0f} MB/s", file=sys.stderr, flush=True)
        finally:
            server.close()
    table = []
    for subscribers in (1, 8):
        case = results[f"subscribers_{subscribers}"]
        ours, ref = statistics.median(case["ours_mb_s"]), statistics.median(case["relay_mb_s"])
        table.append(Row(f"live.follow_{subscribers}",
                         f"follow_logs of {blocks} MB to {subscribers} subscriber(s), lossless, MB/s (median)",
                         ours, ref, "pyzmq relay of 64 KiB reads", ours / ref))
    print(machine())
    print_targets(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": [r.as_dict() for r in table],
                                               "megabytes": blocks, **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
