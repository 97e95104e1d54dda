"""Supervisor tests' helpers: backends for plain commands, and a Listener that records everything."""

from __future__ import annotations

import sys
from typing import Any

from descartes_fast.agents.backends import BackendRegistry

__all__ = ["BACKENDS", "PY", "Recorder"]

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

    def on_output(self, agent: Any, stream: Any, data: bytes) -> None:
        self.output.setdefault((agent.id, stream), bytearray()).extend(data)

    def on_status(self, agent: Any, kind: Any, message: str | None) -> None:
        self.events.append((agent.id, kind, agent.status, message))
