"""What a server tells of its machine in heartbeats and health (a fleet places spawns by it):
load, CPUs and memory, read from the kernel at each heartbeat."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["host_facts"]


def _meminfo() -> dict[str, int]:
    """Bytes of /proc/meminfo's MemTotal and MemAvailable (empty where there is none)."""
    out = {}
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                name, _, rest = line.partition(b":")
                if name in (b"MemTotal", b"MemAvailable"):
                    out[name.decode()] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def host_facts() -> dict[str, Any]:
    """``load_1m`` (the 1-minute load average), ``cpus``, ``memory_total_bytes`` and
    ``memory_available_bytes`` (None where the system does not say)."""
    try:
        load: float | None = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    mem = _meminfo()
    return {"load_1m": load, "cpus": os.cpu_count(), "memory_total_bytes": mem.get("MemTotal"),
            "memory_available_bytes": mem.get("MemAvailable")}
