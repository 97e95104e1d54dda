"""Supervisor tests' helpers: backends for plain commands, and a Listener that records everything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from descartes_fast.agents.backends import BackendRegistry
from descartes_fast.agents.state import StateDir

__all__ = ["BACKENDS", "PY", "Recorder", "state_dir"]

PY = sys.executable
BACKENDS = BackendRegistry.from_tables({
    "sh": {"command": ["sh", "-c", "{task}"], "stdin": "pipe"},
    "sh-closed": {"command": ["sh", "-c", "{task}"], "stdin": "close"},
    "cat": {"command": ["cat"], "cooperative_pause": True},
    "py": {"command": [PY, "-c", "{task}"], "stdin": "null"},
})


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.output: dict[tuple, bytearray] = {}

    def on_output(self, agent: Any, stream: Any, data: bytes, sequence: int) -> None:
        self.output.setdefault((agent.id, stream), bytearray()).extend(data)

    def on_status(self, agent: Any, kind: Any, message: str | None, event: Any = None) -> None:
        self.events.append((agent.id, kind, agent.status, message))


def state_dir(path: Path, *, tail_bytes: int = 1 << 20, agent_bytes: int = 64 << 20,
              total_bytes: int = 1 << 30) -> StateDir:
    """A state directory at *path* for a supervisor under test."""
    return StateDir(path, tail_bytes=tail_bytes, agent_bytes=agent_bytes, total_bytes=total_bytes)
