"""Facts about processes, read from /proc: for tests that check what really runs."""

from __future__ import annotations

import os
import sys

__all__ = ["LOOP", "alive", "keepers", "live_group_members", "paused", "proc_state", "rss_kib"]

#: a loop that forks nothing: a shell looping on `sleep` is often caught by SIGSTOP inside
#: vfork (dash vforks), where it shows state D, not T, until the stopped child is continued
LOOP = f"exec {sys.executable} -c \"while 1: __import__('time').sleep(0.05)\""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # (gone before, or between the open and the read)
        return False


def keepers() -> dict[int, str]:
    """Running keepers: pid -> state directory (from their command lines)."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"descartes_fast.agents.keeper" in args and b"--state-dir" in args:
            found[int(entry.name)] = os.fsdecode(args[args.index(b"--state-dir") + 1])
    return found


def live_group_members(pgid: int) -> list[int]:
    """Processes of group *pgid* that are not zombies (a zombie waits for its reaper only)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def paused(pid: int) -> bool:
    """Stopped (state T: SIGSTOP) or frozen (its cgroup v2 says ``frozen 1``: a frozen task
    shows state S)."""
    if proc_state(pid) == "T":
        return True
    with open(f"/proc/{pid}/cgroup") as f:
        path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        try:
            with open(f"{mount}{path}/cgroup.events") as events:
                return "frozen 1" in events.read().splitlines()
        except (FileNotFoundError, NotADirectoryError, TypeError):
            continue
    return False


def rss_kib(pid: int) -> int:
    """Resident memory of process *pid*, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")
