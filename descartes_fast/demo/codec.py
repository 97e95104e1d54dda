"""The codec demo behind ``descartes-fast codec-demo``: what goes on the wire, and how fast."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack

import descartes_fast
from descartes_fast.wire.codec import get_implementation
from descartes_fast.wire.errors import DecodeError
from descartes_fast.wire.schema import (
    AgentConfig,
    AgentStatus,
    HealthCheckRequest,
    SpawnRequest,
    StatusUpdate,
    StatusUpdateType,
)

#: rmp-serde's own bytes for HealthCheckRequest{request_id: "test-123"} (docs/protocol.md §2.6)
RUST_HEALTH_CHECK = bytes.fromhex("92b46865616c74685f636865636b5f72657175657374a8746573742d313233")


def sample_messages() -> dict[str, Any]:
    agent = uuid.UUID("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b")
    return {
        "SpawnRequest": SpawnRequest(
            "req-0001", AgentConfig(name="refactor-bot", model_backend="claude",
                                    task="Refactor the parser module and add tests",
                                    system_prompt="You are a careful engineer",
                                    environment={"RUST_LOG": "info"}, model="claude-sonnet"), 300),
        "StatusUpdate": StatusUpdate(agent, StatusUpdateType.STATUS_CHANGED, AgentStatus.RUNNING,
                                     "agent started", timestamp=1_700_000_000_123_456_789),
    }


def _per_call_ns(fn: Callable[[], Any], rounds: int, budget_s: float) -> float:
    """Median over *rounds* of the mean time per call, each round about *budget_s* long."""
    n = 1
    while True:  # calibrate
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start > budget_s / 4:
            break
        n *= 4
    per_round = max(1, int(n * budget_s / max(time.perf_counter() - start, 1e-9)))
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        samples.append((time.perf_counter() - start) / per_round * 1e9)
    return statistics.median(samples)


def main(rounds: int = 5, budget_s: float = 0.05) -> int:
    """Print the implementation, a wire walk-through and a speed table; 0 on success."""
    print(f"descartes_fast {descartes_fast.__version__}: codec implementation = "
          f"{descartes_fast.IMPLEMENTATION}")
    compiled = get_implementation("cython") if descartes_fast.HAS_EXTENSIONS else None
    pure = get_implementation("python")
    active = compiled or pure

    print("\n1. Rust compatibility: rmp-serde's bytes for HealthCheckRequest(\"test-123\")")
    ours = active.encode(HealthCheckRequest("test-123"))
    print(f"   rust : {RUST_HEALTH_CHECK.hex()}\n   ours : {ours.hex()}  "
          f"{'identical' if ours == RUST_HEALTH_CHECK else 'DIFFERENT'}")
    if ours != RUST_HEALTH_CHECK:
        return 1

    print("\n2. Round trips")
    messages = sample_messages()
    for name, message in messages.items():
        data = active.encode(message)
        back = active.decode(data)
        print(f"   {name}: {len(data)} bytes, round trip {'exact' if back == message else 'BROKEN'}")
        print(f"     {data.hex()[:96]}...")
        if back != message:
            return 1

    print("\n3. Bad input gets a typed error naming the field")
    bad = msgpack.packb(["spawn_request", "r", ["a", "claude", 42]], use_bin_type=True)
    try:
        active.decode(bad)
    except DecodeError as exc:
        print(f"   {type(exc).__name__}: {exc}")

    print(f"\n4. Speed (ns per call, median of {rounds} rounds; msgpack on the same list form)")
    candidates: list[tuple[str, Any]] = [("compiled", compiled)] if compiled else []
    candidates.append(("pure", pure))
    print(f"   {'operation':<22}" + "".join(f"{c:>11}" for c, _ in candidates) + f"{'msgpack':>11}")
    for name, message in messages.items():
        data = active.encode(message)
        as_list = msgpack.unpackb(data, raw=False)
        rows = {
            f"encode {name}": ([lambda i=i, m=message: i.encode(m) for _, i in candidates],
                               lambda a=as_list: msgpack.packb(a, use_bin_type=True)),
            f"decode {name}": ([lambda i=i, d=data: i.decode(d) for _, i in candidates],
                               lambda d=data: msgpack.unpackb(d, raw=False)),
        }
        for label, (ours_fns, ref) in rows.items():
            times = [_per_call_ns(f, rounds, budget_s) for f in ours_fns] + [_per_call_ns(ref, rounds, budget_s)]
            print(f"   {label:<22}" + "".join(f"{t:>11,.0f}" for t in times))
    print("   (msgpack builds plain lists; descartes_fast builds and validates typed messages)")
    return 0
