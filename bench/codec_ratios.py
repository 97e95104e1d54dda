"""Compiled codec vs msgspec ``Struct(array_like=True)``: ratios on this machine.

    .venv/bin/python bench/codec_ratios.py [--rounds N] [--target SECONDS] [--json OUT] [--check]

For the typical SpawnRequest and StatusUpdate (content from ``bench/messages.py``) it times,
side by side in one process:

* ours:    the compiled twin's ``encode(msg)`` / ``decode(wire)`` (dataclass <-> bytes);
* msgspec: a reused ``msgspec.msgpack.Encoder`` on the same content as a
  ``Struct(array_like=True)`` / a ``msgspec.msgpack.Decoder`` of the tagged union of the two
  Struct types decoding the same bytes into Structs;
* pure:    the pure-Python twin, for information only.

Method: ``timeit.Timer`` per candidate, each calibrated to about
``--target`` seconds per round; the rounds are interleaved round-robin across all
candidates (the starting candidate rotates each round); the figure is the median of the
rounds in ns/op (the ~10 ns timeit loop is not subtracted, for any candidate). The ratio is
median(ours) / median(msgspec); target: ratio <= 1.0. The "paired" column is the range of
the per-round ratios (ours and msgspec measured back to back in the same round).
The encoders' bytes are asserted identical before timing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from messages import CASES, SpawnRequestS, StatusUpdateS, msgspec_decoder, msgspec_encoder
from report import Row

from descartes_fast.wire.codec import get_implementation

CASE_IDS = ("spawn_request", "status_update")


@dataclass
class Candidate:
    key: str            # "<case> <op> <who>"
    fn: Callable[[Any], Any]
    arg: Any
    number: int = 0
    samples: list[float] = field(default_factory=list)  # ns/op per round

    def timer(self) -> timeit.Timer:
        return timeit.Timer("f(a)", globals={"f": self.fn, "a": self.arg})

    def calibrate(self, target: float) -> None:
        t = self.timer()
        t.timeit(number=100)  # warm-up
        n = 1
        while True:
            elapsed = t.timeit(number=n)
            if elapsed >= target / 5:
                break
            n *= 2 if elapsed > target / 50 else 10
        self.number = max(1, round(n * target / elapsed))

    def run_round(self) -> None:
        self.samples.append(self.timer().timeit(number=self.number) / self.number * 1e9)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    compiled = sys.modules.get("descartes_fast.wire._codec_c")
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "descartes-fast": version("descartes-fast"),
        "compiled twin": getattr(compiled, "__file__", "?").rsplit("/", 1)[-1],
        "msgspec": version("msgspec"),
        "msgpack": version("msgpack"),
        "cython (installed)": version("cython"),
    }


def build() -> tuple[list[tuple[str, Candidate, Candidate, Candidate]], list[Candidate]]:
    ours, pure = get_implementation("cython"), get_implementation("python")
    enc = msgspec_encoder()
    dec = msgspec_decoder(SpawnRequestS, StatusUpdateS)
    rows = []
    for cid in CASE_IDS:
        case = CASES[cid]
        wire = ours.encode(case.msg)
        # Same content, same bytes: checked before anything is timed.
        assert wire == enc.encode(case.struct) == pure.encode(case.msg) == case.compact, cid
        assert ours.decode(wire) == pure.decode(wire) == case.msg, cid
        assert dec.decode(wire) == case.struct, cid
        rows.append((f"{cid} encode ({len(wire)} B)",
                     Candidate(f"{cid} encode ours", ours.encode, case.msg),
                     Candidate(f"{cid} encode msgspec", enc.encode, case.struct),
                     Candidate(f"{cid} encode pure", pure.encode, case.msg)))
        rows.append((f"{cid} decode ({len(wire)} B)",
                     Candidate(f"{cid} decode ours", ours.decode, wire),
                     Candidate(f"{cid} decode msgspec", dec.decode, wire),
                     Candidate(f"{cid} decode pure", pure.decode, wire)))
    return rows, [c for row in rows for c in row[1:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--target", type=float, default=0.04,
                    help="seconds per candidate per round (default 0.04)")
    ap.add_argument("--json", metavar="OUT", help="write machine, settings and every sample here")
    ap.add_argument("--check", action="store_true", help="exit 1 if any case misses the target")
    args = ap.parse_args()
    if args.rounds < 1 or args.target <= 0:
        ap.error("--rounds must be >= 1 and --target > 0")

    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"warning: 1-minute load average is {load1:.2f} at start: other processes may be competing "
              "for the CPUs, so absolute ns are inflated (ratios are interleaved, so less so)",
              file=sys.stderr)
    started = time.perf_counter()
    rows, candidates = build()
    for c in candidates:
        c.calibrate(args.target)
    gc.collect()
    for r in range(args.rounds):
        k = r % len(candidates)
        for c in candidates[k:] + candidates[:k]:
            c.run_round()
    wall = time.perf_counter() - started

    info = machine()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print(f"method: timeit, {args.rounds} rounds interleaved round-robin over {len(candidates)} "
          f"candidates, ~{args.target * 1e3:.0f} ms per candidate per round, median ns/op; "
          f"wall {wall:.1f} s")
    print()
    header = ("case", "ours ns", "msgspec ns", "ratio", "paired min..max", "target", "result", "pure ns")
    table = []
    results = []
    failed = False
    target_rows = []
    for label, ours, ref, pure in rows:
        ratio = ours.median / ref.median
        paired = [a / b for a, b in zip(ours.samples, ref.samples)]
        kind, op = label.split()[:2]  # "spawn_request encode (305 B)" -> codec.spawn_encode
        row = Row(f"codec.{kind.split('_')[0]}_{op}", f"{label} (ns)", ours.median, ref.median,
                  "msgspec Struct(array_like)", ratio)
        target_rows.append(row)
        ok = row.ok
        failed |= not ok
        table.append((label, f"{ours.median:,.0f}", f"{ref.median:,.0f}", f"{ratio:.2f}",
                       f"{min(paired):.2f}..{max(paired):.2f}", row.target,
                       "PASS" if ok else "FAIL", f"{pure.median:,.0f}"))
        results.append({"case": label, "ratio": ratio, "pass": ok, "paired_ratios": paired,
                        **{who: {"median_ns": c.median, "min_ns": min(c.samples),
                                 "max_ns": max(c.samples), "number": c.number,
                                 "samples_ns": c.samples}
                           for who, c in (("ours", ours), ("msgspec", ref), ("pure", pure))}})
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    line = "| " + " | ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)) + " |"
    print(line.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print(line.format(*row))

    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": info, "rounds": args.rounds, "target_s": args.target, "wall_s": wall,
            "rows": [r.as_dict() for r in target_rows], "results": results}, indent=2) + "\n")
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
