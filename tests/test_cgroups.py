"""descartes_fast.agents.cgroups on this machine's real cgroup2 filesystem, with real processes.

Skipped (with the reason) where no writable cgroup2 hierarchy with cgroup.kill is found. Every test works in
its own ``descartes-fast-test-<uuid>`` cgroup, killed and removed again by the fixture.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from descartes_fast.agents.cgroups import MOUNTS, AgentCgroups, find_hierarchy, own_cgroup

TREE = ["sh", "-c", "sleep 30 & setsid sleep 30 & wait"]   # 3 processes, one in its own session
BUSY = ["sh", "-c", "while :; do :; done"]


def until(check: Callable[[], object], timeout: float = 5.0, seen: Callable[[], object] = lambda: None) -> None:
    """Wait for *check()* to be true (polling, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"condition not reached; seen: {seen()}"
        time.sleep(0.005)


def cgroup2_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[2:3] == ["cgroup2"]]


def sid(pid: int) -> int | None:
    """The session of *pid* (0 where its leader is outside this pid namespace), None once it is gone."""
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def my_cgroup_line() -> str:
    with open("/proc/self/cgroup") as f:
        return next(line for line in f if line.startswith("0::"))


@pytest.fixture(scope="module")
def hierarchy() -> Path:
    found = find_hierarchy()
    if found is None:
        pytest.skip(f"no writable cgroup2 hierarchy with cgroup.kill among {MOUNTS} "
                    f"(cgroup2 mounts: {cgroup2_mounts() or 'none'}, kernel {os.uname().release})")
    return found


class Agents:
    """One test's AgentCgroups plus the Popen children it started (reaped at the end)."""

    def __init__(self, cg: AgentCgroups) -> None:
        self.cg = cg
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, agent_id: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.cg.make(agent_id)
        child = self.cg.spawn_into(agent_id, lambda: subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        self.children.append(child)
        return child


def cleanup(cg: AgentCgroups) -> None:
    """Kill and remove every agent cgroup under cg.base, then base itself."""
    for agent_id in cg.existing():
        cg.freeze(agent_id, False)
        cg.kill(agent_id)
    deadline = time.monotonic() + 5
    for agent_id in cg.existing():
        while cg.populated(agent_id) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert cg.remove(agent_id), f"cgroup {agent_id} still holds {cg.count(agent_id)} processes"
    cg.base.rmdir()


@pytest.fixture
def agents(hierarchy: Path) -> Iterator[Agents]:
    cg = AgentCgroups.create(f"descartes-fast-test-{uuid.uuid4().hex}")
    assert cg is not None
    env = Agents(cg)
    try:
        yield env
    finally:
        try:
            cleanup(cg)
        finally:
            for child in env.children:
                if child.poll() is None:
                    child.kill()
                child.wait(5)
    assert not cg.base.exists()


def test_find_hierarchy_here(hierarchy: Path) -> None:
    assert isinstance(hierarchy, Path)
    assert str(hierarchy) in MOUNTS
    assert str(hierarchy) in cgroup2_mounts()
    own = own_cgroup(hierarchy)
    assert own.is_dir()
    assert str(os.getpid()) in (own / "cgroup.procs").read_text().split()
    assert not [p for p in own.iterdir() if p.name.startswith("descartes-probe-")], "the probe cgroup was left"


def test_fallback_is_forceable(tmp_path: Path) -> None:
    assert find_hierarchy(["/nonexistent"]) is None
    assert find_hierarchy([str(tmp_path)]) is None                   # a directory, no mount at all
    assert AgentCgroups.create("descartes-fast-test-never", mounts=["/nonexistent"]) is None


def test_tmpfs_is_no_hierarchy() -> None:
    with open("/proc/self/mounts") as f:
        tmpfs = [line.split()[1] for line in f if line.split()[2:3] == ["tmpfs"] and "\\" not in line.split()[1]]
    if not tmpfs:
        pytest.skip("no tmpfs mount on this machine")
    assert find_hierarchy(tmpfs) is None


def test_paths_and_existing(agents: Agents) -> None:
    cg = agents.cg
    assert cg.existing() == []
    assert cg.make("b") == cg.base / "b" and cg.make("a").is_dir()
    assert cg.make("a") == cg.path("a")                              # idempotent
    assert cg.existing() == ["a", "b"]
    for bad in ("", ".", "..", "a/b", "../x"):
        with pytest.raises(ValueError):
            cg.path(bad)
    assert cg.remove("a") and not cg.path("a").exists()
    assert cg.existing() == ["b"]


def test_spawn_into_contains_the_whole_tree(agents: Agents) -> None:
    before = my_cgroup_line()
    child = agents.spawn("a", TREE)
    cg = agents.cg
    sessions = lambda: {sid(pid) for pid in cg._pids("a")}
    # three processes can be counted before the forked child has called setsid(): wait for the second session
    until(lambda: cg.count("a") == 3 and len(sessions()) == 2, seen=lambda: (cg.count("a"), sessions()))
    assert my_cgroup_line() == before                                # the caller is back home
    assert child.pid in cg._pids("a") and os.getpid() not in cg._pids("a")
    assert sid(child.pid) in sessions()                               # setsid left the session...
    assert cg.populated("a")                                          # ... but not the cgroup


def test_spawn_into_restores_the_caller_when_spawn_raises(agents: Agents) -> None:
    cg = agents.cg
    before = my_cgroup_line()
    cg.make("a")

    def boom() -> None:
        assert str(os.getpid()) in (cg.path("a") / "cgroup.procs").read_text().split()   # it ran inside
        raise RuntimeError("spawn failed")

    with pytest.raises(RuntimeError, match="spawn failed"):
        cg.spawn_into("a", boom)
    assert my_cgroup_line() == before
    with pytest.raises(FileNotFoundError):                           # a real Popen failure
        cg.spawn_into("a", functools.partial(subprocess.Popen, ["/nonexistent/program"]))
    assert my_cgroup_line() == before
    assert cg.count("a") == 0 and not cg.populated("a")
    with pytest.raises(FileNotFoundError):                           # no cgroup made: nothing moves
        cg.spawn_into("missing", boom)
    assert my_cgroup_line() == before


def test_spawn_into_without_known_hierarchy(agents: Agents) -> None:
    before = my_cgroup_line()
    plain = AgentCgroups(agents.cg.base)                             # hierarchy looked up from the mounts
    assert plain.hierarchy is None
    plain.make("a")
    child = plain.spawn_into("a", lambda: subprocess.Popen(["sleep", "30"]))
    agents.children.append(child)
    assert plain.count("a") == 1 and child.pid in plain._pids("a")
    assert my_cgroup_line() == before


def test_kill_ends_every_process(agents: Agents) -> None:
    cg = agents.cg
    child = agents.spawn("a", TREE)
    until(lambda: cg.count("a") == 3, seen=lambda: cg.count("a"))
    pids = cg._pids("a")
    assert cg.kill("a")
    until(lambda: not cg.populated("a"), seen=lambda: cg._pids("a"))
    assert cg.count("a") == 0
    assert child.wait(5) == -signal.SIGKILL
    for pid in pids:                                                 # gone, or a zombie nobody reaped yet
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), (pid, state)
    assert cg.remove("a") and not cg.path("a").exists()
    # a gone cgroup is reported, never raised
    assert cg.kill("a") is False
    assert cg.populated("a") is False and cg.frozen("a") is False
    assert cg.count("a") == 0 and cg.signal("a", signal.SIGTERM) == 0
    assert cg.usage("a") == (None, None)
    assert cg.remove("a") is False
    cg.freeze("a", True)


def test_remove_refuses_a_populated_cgroup(agents: Agents) -> None:
    agents.spawn("a", ["sleep", "30"])
    assert agents.cg.remove("a") is False
    assert agents.cg.path("a").is_dir()


def busy_cpu(cg: AgentCgroups, agent_id: str) -> int:
    cpu, _ = cg.usage(agent_id)
    assert cpu is not None, "cpu.stat has no usage_usec"
    return cpu


def test_usage_grows_for_a_busy_child(agents: Agents) -> None:
    cg = agents.cg
    agents.spawn("a", BUSY)
    first = busy_cpu(cg, "a")
    until(lambda: busy_cpu(cg, "a") > first + 20_000, seen=lambda: busy_cpu(cg, "a"))   # 20 ms of CPU
    _, peak = cg.usage("a")
    if (cg.path("a") / "memory.peak").exists():
        assert peak is not None and peak > 0
    else:
        assert peak is None


def test_freeze_round_trip(agents: Agents) -> None:
    cg = agents.cg
    agents.spawn("a", BUSY)
    start = busy_cpu(cg, "a")
    until(lambda: busy_cpu(cg, "a") > start + 10_000)
    assert not cg.frozen("a")
    cg.freeze("a", True)
    until(lambda: cg.frozen("a"))
    frozen_at = busy_cpu(cg, "a")
    time.sleep(0.2)
    assert busy_cpu(cg, "a") - frozen_at < 1_000, "a frozen cgroup kept using CPU"
    assert cg.populated("a")
    cg.freeze("a", False)
    until(lambda: not cg.frozen("a"))
    thawed_at = busy_cpu(cg, "a")
    until(lambda: busy_cpu(cg, "a") > thawed_at + 10_000)


def _names(pids: list[int]) -> dict[int, str]:
    """Each of *pids* that still runs, with its program's name (``/proc/PID/comm``)."""
    names = {}
    for pid in pids:
        try:
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            pass
    return names


def test_signal_reaches_every_process(agents: Agents, tmp_path: Path) -> None:
    cg = agents.cg
    out = tmp_path / "terminated"
    script = tmp_path / "term.sh"          # records its own pid on SIGTERM; its background sleep just dies of it
    script.write_text('trap \'echo $$ >> "$1"; exit 0\' TERM\nsleep 30 &\nwait\n')
    child = agents.spawn("a", ["sh", "-c", 'sh "$0" "$1" & setsid sh "$0" "$1" & exec sh "$0" "$1"',
                               str(script), str(out)])
    # 3 shells, 3 sleeps (a shell's child is "sh" too until it has exec'd sleep: wait for the names)
    until(lambda: sorted(_names(cg._pids("a")).values()) == ["sh"] * 3 + ["sleep"] * 3,
          seen=lambda: _names(cg._pids("a")))
    shells = {pid for pid, name in _names(cg._pids("a")).items() if name == "sh"}
    assert len(shells) == 3
    assert cg.signal("a", signal.SIGTERM) == 6
    until(lambda: not cg.populated("a"), seen=lambda: cg._pids("a"))
    assert child.wait(5) == 0
    assert {int(line) for line in out.read_text().split()} == shells


def test_signal_skips_gone_and_forbidden(agents: Agents, monkeypatch: pytest.MonkeyPatch) -> None:
    cg = agents.cg
    agents.spawn("a", TREE)
    until(lambda: cg.count("a") == 3)
    gone, forbidden, ok = cg._pids("a")
    delivered: list[int] = []

    def fake_kill(pid: int, sig: int) -> None:
        if pid == gone:
            raise ProcessLookupError(pid)
        if pid == forbidden:
            raise PermissionError(pid)
        delivered.append(pid)

    monkeypatch.setattr(os, "kill", fake_kill)
    assert cg.signal("a", signal.SIGTERM) == 1
    assert delivered == [ok]
