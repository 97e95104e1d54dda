"""Per-agent cgroup v2 containment: every agent's processes live in their own cgroup, so all of them (also those
that left the process group with ``setsid``) can be counted, frozen, signalled and killed at once.

Layout: ``<hierarchy>/<own cgroup>/<name>/<agent-id>``. Stdlib only and no imports from the rest of the package:
the long-lived keeper process imports this module and must start fast.

The kernel needs cgroup2 mounted and writable for this process and ``cgroup.kill`` (Linux >= 5.14);
:func:`find_hierarchy` checks both, and callers fall back to process-group handling when it returns ``None``.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

__all__ = ["MOUNTS", "find_hierarchy", "own_cgroup", "AgentCgroups"]

T = TypeVar("T")

#: where a cgroup2 hierarchy is looked for, in order (hybrid mode first, then pure v2)
MOUNTS: tuple[str, ...] = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")

_PROC_MOUNTS: Final = "/proc/self/mounts"
_PROC_CGROUP: Final = "/proc/self/cgroup"
#: errnos meaning "the cgroup (or one of its files) is not there (any more)"
_GONE: Final = frozenset({errno.ENOENT, errno.ENODEV})
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


def _mount_types() -> dict[str, str]:
    """Mount point -> filesystem type of what is visible there (a later mount hides an earlier one)."""
    types: dict[str, str] = {}
    try:
        with open(_PROC_MOUNTS, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    point = _OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[1])
                    types[os.path.normpath(point)] = fields[2]
    except OSError:
        pass
    return types


def _probe(hierarchy: Path) -> bool:
    """Whether a child of our own cgroup in *hierarchy* can be created, has ``cgroup.kill`` and takes processes."""
    try:
        own = own_cgroup(hierarchy)
    except (OSError, LookupError):
        return False
    probe = own / f"descartes-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return ((probe / "cgroup.kill").exists() and os.access(probe / "cgroup.procs", os.W_OK)
                and os.access(own / "cgroup.procs", os.W_OK))
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def find_hierarchy(mounts: Sequence[str] = MOUNTS) -> Path | None:
    """The first of *mounts* that is a cgroup2 mount (per /proc/self/mounts) where this process may create a cgroup
    under its own cgroup and which supports ``cgroup.kill`` (kernel >= 5.14), probed by creating and removing a
    child directory. ``None`` otherwise (pass a path that is no cgroup2 mount to force the fallback)."""
    types = _mount_types()
    for mount in mounts:
        point = os.path.realpath(mount)
        if types.get(point) == "cgroup2" and _probe(Path(point)):
            return Path(point)
    return None


def own_cgroup(hierarchy: Path) -> Path:
    """This process's cgroup directory in *hierarchy* (from the ``0::`` line of /proc/self/cgroup, read now).

    Raises LookupError if there is no such line or the cgroup lies outside this cgroup namespace."""
    with open(_PROC_CGROUP, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if line.startswith("0::"):
                relative = line[3:].rstrip("\n").lstrip("/")
                if ".." in Path(relative).parts:
                    raise LookupError(f"cgroup {line[3:].strip()!r} is outside this cgroup namespace")
                return hierarchy / relative
    raise LookupError(f"no cgroup2 ('0::') entry in {_PROC_CGROUP}")


def _mount_of(path: Path) -> Path | None:
    """The cgroup2 mount point *path* lies on (the longest matching one), if any."""
    real = os.path.realpath(path)
    points = [p for p, t in _mount_types().items() if t == "cgroup2" and (real + "/").startswith(p.rstrip("/") + "/")]
    return Path(max(points, key=len)) if points else None


def _read(path: str) -> str | None:
    """The contents of a cgroup file; ``None`` if it (or its cgroup) is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        parts = []
        while part := os.read(fd, 1 << 16):
            parts.append(part)
        return b"".join(parts).decode("ascii", "replace")
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    finally:
        os.close(fd)


def _write(path: str, data: str) -> None:
    """Write *data* to an existing cgroup file in one write (no O_CREAT, no O_TRUNC: cgroupfs files only)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode("ascii"))
    finally:
        os.close(fd)


def _keyed(text: str | None, key: str) -> str | None:
    """The value of *key* in a flat-keyed cgroup file (``key value`` lines)."""
    for line in (text or "").splitlines():
        k, _, value = line.partition(" ")
        if k == key:
            return value.strip()
    return None


class AgentCgroups:
    """The cgroups of one server's agents: ``<hierarchy>/<own cgroup>/<name>/<agent-id>``.

    Queries and controls never raise for a cgroup that is gone (they report it: False, 0, None); only
    :meth:`make` and :meth:`spawn_into` do. Other errors (e.g. EACCES on a control file) propagate.
    """

    base: Path
    #: the cgroup2 mount *base* lies on (needed by spawn_into); looked up in /proc/self/mounts if not given
    hierarchy: Path | None

    def __init__(self, base: Path, hierarchy: Path | None = None) -> None:
        """Use (and create, like mkdir -p) the cgroup directory *base*."""
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.hierarchy = hierarchy
        self._base = str(base)  # (the hot paths build plain strings: a pathlib join costs more than the read)
        self._home: str | None = None  # the caller's own cgroup.procs (see spawn_into)
        self._peak = True  # whether memory.peak may exist (see usage)

    @classmethod
    def create(cls, name: str, mounts: Sequence[str] = MOUNTS) -> AgentCgroups | None:
        """The agent cgroups *name* under this process's own cgroup; None if no usable hierarchy or mkdir fails."""
        _check_name(name)
        hierarchy = find_hierarchy(mounts)
        if hierarchy is None:
            return None
        try:
            return cls(own_cgroup(hierarchy) / name, hierarchy)
        except (OSError, LookupError):
            return None

    def path(self, agent_id: str) -> Path:
        """The cgroup directory of *agent_id* (which must be a plain directory name)."""
        _check_name(agent_id)
        return self.base / agent_id

    def _file(self, agent_id: str, name: str) -> str:
        """The path of the agent's cgroup file *name*."""
        _check_name(agent_id)
        return f"{self._base}/{agent_id}/{name}"

    def make(self, agent_id: str) -> Path:
        """Create the agent's cgroup (if missing) and return its directory."""
        _check_name(agent_id)
        try:
            os.mkdir(f"{self._base}/{agent_id}")
        except FileExistsError:
            pass
        return self.base / agent_id

    def spawn_into(self, agent_id: str, spawn: Callable[[], T]) -> T:
        """Call *spawn* (which starts a child process with fork/posix_spawn) while the calling process sits in the
        agent's cgroup, so the child is born in it (no window in which it could fork outside); moves the caller back
        to the cgroup it was in, also when spawn raises. Only for a single-threaded caller (it moves the whole process
        via cgroup.procs). The agent's cgroup must exist (:meth:`make`). Where the caller was is read at the first
        call (a spawn is a hot path): nothing else may move the caller meanwhile."""
        if self._home is None:
            hierarchy = self.hierarchy or _mount_of(self.base)
            if hierarchy is None:
                raise LookupError(f"{self.base} is not on a cgroup2 mount")
            self._home = str(own_cgroup(hierarchy) / "cgroup.procs")
        home = self._home
        pid = str(os.getpid())
        _write(self._file(agent_id, "cgroup.procs"), pid)
        try:
            return spawn()
        finally:
            _write(home, pid)

    def _control(self, agent_id: str, file: str, value: str) -> bool:
        """Write *value* to the agent's control *file*; False if the cgroup is gone (a missing file in a present
        cgroup means an unsupported kernel and raises)."""
        try:
            _write(self._file(agent_id, file), value)
        except OSError as e:
            if e.errno in _GONE and not self.path(agent_id).is_dir():
                return False
            raise
        return True

    def kill(self, agent_id: str) -> bool:
        """SIGKILL every process in the agent's cgroup at once (cgroup.kill); False if the cgroup is gone.

        Asynchronous: wait for :meth:`populated` to turn False before :meth:`remove`."""
        return self._control(agent_id, "cgroup.kill", "1")

    def signal(self, agent_id: str, sig: int) -> int:
        """Send *sig* to each process in the agent's cgroup; the number signalled (processes that exited meanwhile
        or may not be signalled, ESRCH/EPERM, are skipped; 0 if the cgroup is gone)."""
        sent = 0
        for pid in self._pids(agent_id):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue
            sent += 1
        return sent

    def freeze(self, agent_id: str, frozen: bool) -> None:
        """Freeze (or thaw) the agent's cgroup via cgroup.freeze; nothing if it is gone. Asynchronous: see
        :meth:`frozen`."""
        self._control(agent_id, "cgroup.freeze", "1" if frozen else "0")

    def frozen(self, agent_id: str) -> bool:
        """Whether the agent's cgroup is frozen ("frozen 1" in cgroup.events: the truth, since a frozen task shows
        state S in /proc); False if gone."""
        return _keyed(_read(self._file(agent_id, "cgroup.events")), "frozen") == "1"

    def populated(self, agent_id: str) -> bool:
        """Whether any live process is in the agent's cgroup ("populated 1" in cgroup.events); False if gone."""
        return _keyed(_read(self._file(agent_id, "cgroup.events")), "populated") == "1"

    def _pids(self, agent_id: str) -> list[int]:
        return [int(line) for line in (_read(self._file(agent_id, "cgroup.procs")) or "").split()]

    def count(self, agent_id: str) -> int:
        """The number of processes in the agent's cgroup (cgroup.procs); 0 if gone."""
        return len(self._pids(agent_id))

    def usage(self, agent_id: str) -> tuple[int | None, int | None]:
        """(CPU time used in µs, ``usage_usec`` of cpu.stat; peak memory in bytes, memory.peak): each None if the
        file is absent (memory.peak needs the memory controller enabled) or the cgroup is gone. Once memory.peak
        is missing from a cgroup that exists, it is not looked for again (the controller is enabled for the agents'
        cgroups when *base* is made, or not at all)."""
        stat = _read(self._file(agent_id, "cpu.stat"))
        cpu = _keyed(stat, "usage_usec")
        peak = (_read(self._file(agent_id, "memory.peak")) or "").strip() if self._peak else ""
        if stat is not None and not peak:
            self._peak = False
        return (int(cpu) if cpu else None, int(peak) if peak.isdigit() else None)

    def current(self, agent_id: str) -> tuple[int | None, int | None]:
        """(CPU time used so far in µs; memory in use now in bytes, memory.current): None where absent."""
        cpu = _keyed(_read(self._file(agent_id, "cpu.stat")), "usage_usec")
        now = (_read(self._file(agent_id, "memory.current")) or "").strip()
        return (int(cpu) if cpu else None, int(now) if now.isdigit() else None)

    def remove(self, agent_id: str) -> bool:
        """Remove the agent's cgroup once empty; False if it is still populated (or has children) or is absent."""
        try:
            _check_name(agent_id)
            os.rmdir(f"{self._base}/{agent_id}")
        except OSError as e:
            if e.errno in _GONE or e.errno in (errno.EBUSY, errno.ENOTEMPTY):
                return False
            raise
        return True

    def existing(self) -> list[str]:
        """The agent ids (child cgroup names) present under *base*, sorted; [] if base is gone."""
        try:
            with os.scandir(self.base) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except OSError as e:
            if e.errno in _GONE:
                return []
            raise


def _check_name(name: str) -> None:
    """Refuse names that are not a single plain directory name (they would address another cgroup)."""
    if not name or name in (".", "..") or any(c in name for c in "/\0\n"):
        raise ValueError(f"not a valid cgroup name: {name!r}")
