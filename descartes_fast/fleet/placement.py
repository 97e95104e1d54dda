"""Where a fleet spawns an agent: the documented placement policy.

Among the servers that are reachable, offer the backend the spawn asks for, have every label it
asks for (the fleet file's labels and those the server tells in its heartbeats) and have room
(fewer active agents than their ``max_agents``), the least loaded is chosen:

1. the lowest share of its agent slots in use (``active_agents / max_agents``),
2. then the lowest load per CPU (the 1-minute load average over the CPUs),
3. then the most available memory,
4. then the name (so that equal servers are chosen in a stable order).

A spawn that fails on the chosen server is tried on the next one in that order, up to
``attempts`` servers in all. Spawns placed since a server's last heartbeat count as active
there, so that a burst of spawns spreads before the heartbeats catch up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Candidate", "rank", "why_none"]


@dataclass(frozen=True)
class Candidate:
    """What placement knows of one server."""

    name: str
    reachable: bool
    facts: Mapping[str, Any]      # its latest heartbeat's data (backends, labels, load, memory ...)
    labels: Mapping[str, str]     # the fleet file's labels and the server's own
    placed: int = 0               # spawns placed there since its last heartbeat

    def offers(self, backend: str) -> bool:
        backends = self.facts.get("backends")
        return backends is None or backend in backends  # (a server that does not say: it may)

    def has(self, labels: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in labels.items())

    @property
    def active(self) -> int:
        return int(self.facts.get("active_agents") or 0) + self.placed

    @property
    def has_room(self) -> bool:
        most = self.facts.get("max_agents")
        return most is None or self.active < int(most)

    def key(self) -> tuple[float, float, float, str]:
        most = self.facts.get("max_agents") or 0
        share = self.active / most if most else float(self.active)
        load, cpus = self.facts.get("load_1m"), self.facts.get("cpus") or 1
        per_cpu = load / cpus if isinstance(load, (int, float)) else 0.0
        free = self.facts.get("memory_available_bytes")
        return share, per_cpu, -float(free) if isinstance(free, (int, float)) else 0.0, self.name


def rank(candidates: Iterable[Candidate], backend: str, labels: Mapping[str, str]) -> list[Candidate]:
    """The servers that may take the spawn, best first (see the module docstring)."""
    fit = [c for c in candidates if c.reachable and c.offers(backend) and c.has(labels) and c.has_room]
    return sorted(fit, key=Candidate.key)


def why_none(candidates: Iterable[Candidate], backend: str, labels: Mapping[str, str]) -> str:
    """Why no server may take the spawn: each server and what it lacks."""
    reasons = []
    for c in sorted(candidates, key=lambda c: c.name):
        lacks = [text for bad, text in (
            (not c.reachable, "unreachable"), (not c.offers(backend), f"does not offer backend {backend!r}"),
            (not c.has(labels), "lacks label(s) " + ", ".join(f"{k}={v}" for k, v in labels.items()
                                                              if c.labels.get(k) != v)),
            (not c.has_room, f"full ({c.active} of {c.facts.get('max_agents')} agents)")) if bad]
        reasons.append(f"{c.name}: {'; '.join(lacks)}")
    return "no server can take it: " + (" | ".join(reasons) if reasons else "the fleet has no server")
