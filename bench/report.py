"""What every benchmark script prints: the machine, and a table of targets with PASS/FAIL."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import descartes_fast

#: one target line: case, measured, reference value, what the reference is, ratio, target, met?
Row = tuple[str, float, float, str, float, str, bool]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return (f"machine: {cpu}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"descartes_fast {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")


def print_targets(rows: list[Row], measured: str = "measured") -> None:
    """A Markdown table: case, measured, reference, what the reference is, ratio, target, result."""
    header = ["case", measured, "reference", "reference is", "ratio", "target", "result"]
    body = [[case, f"{value:,.1f}", f"{ref:,.1f}", ref_name, f"{ratio:.2f}", target, "PASS" if ok else "FAIL"]
            for case, value, ref, ref_name, ratio, target, ok in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = {1, 2, 4}
    for i, r in enumerate([header, *body]):
        cells = [c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
