"""PUB fan-out of log chunks to 1 and 8 subscribers, against a plain pyzmq publisher.

    python bench/pubsub_bench.py [--quick] [--json OUT]

ours: a descartes-fast-server runs an agent that writes output as fast as it can; every chunk
goes out on PUB as a ``log_stream`` message. reference: a plain synchronous pyzmq PUB sending
the same number of ``log_stream`` messages of the same size, encoded with msgspec. Each
subscriber is its own process: it counts messages and bytes of log data from the first to the
last, and counts the gaps in ``sequence``. Reported: the slowest subscriber's messages/s and
MB/s of log data, and the gaps: a plain subscriber that falls ``--pub-buffer`` behind our
server misses chunks until it catches up (``follow_logs`` would read them from the store); the
reference publisher has no queue limit. No target: information for issues 5 and 17.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine
from server_bench import OurServer

from descartes_fast.wire import codec
from descartes_fast.wire.frames import parse_pub_frame
from descartes_fast.wire.schema import AgentConfig, LogStreamMessage, SpawnRequest, StatusUpdate

HERE = Path(__file__).resolve()
LINE = b"x" * 99 + b"\n"


def subscriber(endpoint: str) -> None:
    """Count log chunks until a terminal status (ours) or an end marker (reference); print JSON."""
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    print("ready", flush=True)
    count = size = gaps = 0
    expected: dict = {}
    first = last = 0.0
    while True:
        # a subscriber that fell --pub-buffer behind misses events until it catches up, perhaps
        # the agent's last status: 5 s of silence ends it too
        if not sock.poll(5000):
            break
        topic, payload = parse_pub_frame(sock.recv())
        if topic == b"end":
            break
        message = codec.decode(payload)
        if isinstance(message, StatusUpdate):
            if message.status is not None and message.status.is_terminal():
                break
            continue
        if not isinstance(message, LogStreamMessage):
            continue
        now = time.perf_counter()
        first = first or now
        last = now
        key = (message.agent_id, message.stream_type)
        gaps += message.sequence != expected.get(key, message.sequence)
        expected[key] = message.sequence + 1
        count += 1
        size += len(message.data)
    print(json.dumps({"messages": count, "bytes": size, "seconds": last - first, "gaps": gaps}), flush=True)


def reference_publisher(endpoint: str, messages: int, chunk: int) -> None:
    """Plain sync pyzmq PUB: msgspec-encoded log_stream messages as fast as it can, then an end marker."""
    import uuid

    import msgspec

    class Log(msgspec.Struct, array_like=True, tag="log_stream", tag_field="type"):
        agent_id: bytes
        stream_type: str
        data: list[int]
        timestamp: tuple[int, int]
        sequence: int

    encoder = msgspec.msgpack.Encoder()
    sock = zmq.Context().socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.bind(endpoint)
    agent = uuid.uuid4()
    topic = str(agent).encode() + b"\x00"
    data = list((LINE * (chunk // len(LINE) + 1))[:chunk])
    time.sleep(1.0)  # subscribers join
    for seq in range(messages):
        sock.send(topic + encoder.encode(Log(agent.bytes, "stdout", data, divmod(time.time_ns(), 10**9), seq)))
    sock.send(b"end\x00")
    time.sleep(1.0)


def _subscribers(endpoint: str, n: int) -> list[subprocess.Popen]:
    subs = [subprocess.Popen([sys.executable, str(HERE), "--role", "sub", endpoint], stdout=subprocess.PIPE,
                             text=True) for _ in range(n)]
    for s in subs:
        assert s.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # subscriptions reach the publisher
    return subs


def _collect(subs: list[subprocess.Popen]) -> dict:
    results = [json.loads(s.communicate(timeout=120)[0].strip().splitlines()[-1]) for s in subs]
    slowest = min(results, key=lambda r: r["messages"] / max(r["seconds"], 1e-9))
    return {"subscribers": len(subs), "messages": slowest["messages"],
            "msgs_per_s": slowest["messages"] / max(slowest["seconds"], 1e-9),
            "mb_per_s": slowest["bytes"] / 1e6 / max(slowest["seconds"], 1e-9),
            "gaps": sum(r["gaps"] for r in results), "lost": sum(results[0]["messages"] - r["messages"]
                                                                  for r in results)}


def run(tmp: Path, megabytes: int) -> list[dict]:
    out = []
    script = f"import sys\nw=sys.stdout.buffer.write\nfor _ in range({megabytes * 10_000}): w({LINE!r})\n"
    for n in (1, 8):
        server = OurServer(tmp, pub=f"ipc://{tmp}/pub{n}")
        try:
            subs = _subscribers(f"ipc://{tmp}/pub{n}", n)
            server.call(SpawnRequest("p", AgentConfig(model_backend="python", task=script)))
            ours = _collect(subs)
        finally:
            server.close()
        chunk = max(1, round(megabytes * 1_000_000 / max(ours["messages"], 1)))
        endpoint = f"ipc://{tmp}/ref{n}"
        subs_proc = None
        publisher = subprocess.Popen([sys.executable, str(HERE), "--role", "pub", endpoint,
                                      str(ours["messages"]), str(chunk)])
        try:
            time.sleep(0.3)
            subs_proc = _subscribers(endpoint, n)
            reference = _collect(subs_proc)
        finally:
            publisher.wait(120)
        out.append({"subscribers": n, "chunk_bytes": chunk, "ours": ours, "reference": reference})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="less output (a few seconds)")
    parser.add_argument("--json", metavar="OUT", help="write the results here")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        if args.role[0] == "sub":
            subscriber(args.role[1])
        else:
            reference_publisher(args.role[1], int(args.role[2]), int(args.role[3]))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp), 10 if args.quick else 50)
    print(machine())
    print("PUB fan-out of log chunks over IPC (slowest subscriber; log data only):")
    for r in results:
        o, ref = r["ours"], r["reference"]
        print(f"  {r['subscribers']} subscriber(s), {o['messages']:,} chunks of ~{r['chunk_bytes']:,} B: "
              f"ours {o['msgs_per_s']:,.0f} msg/s {o['mb_per_s']:,.1f} MB/s (gaps {o['gaps']}, lost {o['lost']}); "
              f"reference {ref['msgs_per_s']:,.0f} msg/s {ref['mb_per_s']:,.1f} MB/s (gaps {ref['gaps']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": [], "fanout": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
