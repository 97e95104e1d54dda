"""What the benchmark scripts share: the targets (from targets.toml), the machine, the table."""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import descartes_fast

TARGETS: dict[str, dict[str, dict[str, Any]]] = tomllib.loads(
    (Path(__file__).resolve().parent / "targets.toml").read_text())


@dataclass
class Row:
    """One measured target."""

    id: str                # "<group>.<name>" in targets.toml
    case: str              # what was measured, with its unit
    measured: float
    reference: float
    reference_is: str
    ratio: float           # measured / reference
    target: str = ""       # filled from targets.toml, e.g. ">= 1.5"
    ok: bool = False

    def __post_init__(self) -> None:
        group, name = self.id.split(".", 1)
        spec = TARGETS[group][name]
        self.target = f"{spec['op']} {spec['ratio']}"
        self.ok = self.ratio >= spec["ratio"] if spec["op"] == ">=" else self.ratio <= spec["ratio"]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return (f"machine: {cpu}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"descartes_fast {descartes_fast.__version__} ({descartes_fast.IMPLEMENTATION})")


def print_targets(rows: list[Row], measured: str = "measured") -> None:
    """A Markdown table: case, measured, reference, what the reference is, ratio, target, result."""
    header = ["case", measured, "reference", "reference is", "ratio", "target", "result"]
    body = [[r.case, f"{r.measured:,.1f}", f"{r.reference:,.1f}", r.reference_is, f"{r.ratio:.2f}", r.target,
             "PASS" if r.ok else "FAIL"] for r in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = {1, 2, 4}
    for i, r in enumerate([header, *body]):
        cells = [c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def settle(state_dir: Path) -> None:
    """Every round starts alike: the earlier rounds' output under *state_dir* written back (sync)
    and out of the page cache (in output_bench, later rounds ran at a third of the first one's
    rate while it filled up)."""
    os.sync()
    for path in state_dir.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
