"""The state directory (``--state-dir``): one server's lock, its agent records and its output store.

Created readable by its owner only (mode 0700): agents' output and configs (environments
included) are in it. One server at a time may use a directory: a second one is refused, with
the pid of the first.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from descartes_fast.agents.records import AgentRecords
from descartes_fast.agents.store import OutputStore

__all__ = ["StateDir", "StateError", "default_state_dir"]


class StateError(Exception):
    """The state directory cannot be used (the text says why)."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/descartes-fast``, else ``~/.local/state/descartes-fast``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "descartes-fast"


class StateDir:
    """Lock *path* for this process and open what is in it (creating it, mode 0700, if needed).

    *tail_bytes*, *agent_bytes* and *total_bytes* are the output store's budgets
    (:class:`~descartes_fast.agents.store.OutputStore`).
    """

    def __init__(self, path: Path, *, tail_bytes: int, agent_bytes: int, total_bytes: int) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.path.stat().st_uid == os.getuid():
                self.path.chmod(0o700)
        except OSError as exc:
            raise StateError(f"cannot use the state directory {self.path}: {exc.strerror}") from None
        self._lock = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock)
            raise StateError(f"the state directory {self.path} is in use by another descartes-fast-server "
                             f"(pid {holder}); give each server its own --state-dir") from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)
        self.records = AgentRecords(self.path / "agents.db")
        self.store = OutputStore(self.path, tail_bytes=tail_bytes, agent_bytes=agent_bytes, total_bytes=total_bytes,
                                 evictable=self.records.ended_ids)

    def close(self) -> None:
        self.records.close()
        os.close(self._lock)
