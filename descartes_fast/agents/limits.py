"""The limits an agent runs under: CPU time and open files (rlimits), the resident memory of its
process group (a watchdog on the event loop) and wall-clock time (a loop timer).

Processes that leave the agent's process group (``setsid``, ``setpgid``) escape the memory
watchdog; RLIMIT_CPU is per process (each child gets its own budget).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from descartes_fast.agents.policy import SpawnPolicy

__all__ = ["Limits", "MemoryWatchdog", "apply_rlimits", "group_rss", "CPU_HARD_EXTRA"]

#: RLIMIT_CPU hard limit = soft + this (SIGXCPU at the soft limit first, SIGKILL at the hard one)
CPU_HARD_EXTRA: Final = 5
_MEMORY_TICK: Final = 0.25     # seconds between scans of the memory watchdog
_MiB: Final = 1024 * 1024
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Limits:
    """One agent's limits (None: not limited)."""

    cpu_secs: int | None = None
    memory_mb: int | None = None
    wall_secs: float | None = None

    @classmethod
    def of(cls, policy: SpawnPolicy, timeout_secs: int | None) -> Limits:
        return cls(policy.cpu_secs, policy.memory_mb, policy.wall_limit(timeout_secs))

    def cpu_exceeded(self, exit_code: int, usage: resource.struct_rusage) -> bool:
        """Killed by SIGXCPU (the soft limit), or by SIGKILL at the hard limit."""
        if self.cpu_secs is None:
            return False
        used = usage.ru_utime + usage.ru_stime
        return exit_code == -signal.SIGXCPU or (
            exit_code == -signal.SIGKILL and used >= self.cpu_secs + CPU_HARD_EXTRA - 0.5)

    def wall_text(self) -> str:
        return f"wall-clock limit of {self.wall_secs:g} s exceeded"

    def cpu_text(self) -> str:
        return f"CPU time limit of {self.cpu_secs} s exceeded (SIGXCPU)"


def apply_rlimits(pid: int, policy: SpawnPolicy) -> None:
    """CPU time and open-file limits of the new process *pid*.

    Set with prlimit right after the process starts, so the program runs unlimited for the few
    microseconds between its exec and this call (a child it forks in that window keeps the
    server's limits). preexec_fn would close the window but is not safe here: agents are spawned
    from a thread pool, and forking a threaded process then running Python code can deadlock.
    """
    try:
        if policy.cpu_secs is not None:
            resource.prlimit(pid, resource.RLIMIT_CPU, (policy.cpu_secs, policy.cpu_secs + CPU_HARD_EXTRA))
        if policy.open_files is not None:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (policy.open_files, policy.open_files))
    except ProcessLookupError:
        pass  # it has exited already


class MemoryWatchdog:
    """Every ``_MEMORY_TICK`` while a watched group lives: report the groups over their limit.

    ``on_exceeded(pgid, text)`` is called once per group found over its limit (the caller ends
    it and stops watching it). No RLIMIT_AS: it limits address space, not memory, and V8/node
    reserves far more address space than it uses.
    """

    def __init__(self, on_exceeded: Callable[[int, str], None]) -> None:
        self._on_exceeded = on_exceeded
        self._limits: dict[int, int] = {}  # pgid -> limit in MiB
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, pgid: int, memory_mb: int) -> None:
        self._limits[pgid] = memory_mb
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_MEMORY_TICK, self._tick)

    def forget(self, pgid: int) -> None:
        self._limits.pop(pgid, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self._limits:
            return
        for pgid, rss in group_rss(set(self._limits)).items():
            limit = self._limits.get(pgid)
            if limit is not None and rss > limit * _MiB:
                self.forget(pgid)
                used = -(-rss // _MiB)
                self._on_exceeded(pgid, f"memory limit exceeded: {used} MiB resident in the process "
                                        f"group > {limit} MiB (memory_mb)")
        if self._limits:
            self._timer = asyncio.get_running_loop().call_later(_MEMORY_TICK, self._tick)


def group_rss(pgids: set[int]) -> dict[int, int]:
    """Resident bytes of every process group in *pgids*: one pass over /proc.

    A page shared by several processes counts once per process (conservative)."""
    totals = dict.fromkeys(pgids, 0)
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                fd = os.open(f"/proc/{entry.name}/stat", os.O_RDONLY)
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
            except OSError:
                continue  # gone meanwhile
            fields = data[data.rfind(b")") + 2:].split()  # fields from 3 (state) on: pgrp = 5, rss = 24
            if len(fields) > 21:
                pgrp = int(fields[2])
                if pgrp in totals:
                    totals[pgrp] += int(fields[21]) * _PAGE
    return totals
