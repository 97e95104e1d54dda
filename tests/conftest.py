"""Every test leaves no keeper behind: a keeper (and so its agents) that a test's state directory
still has when the test ends is sent SIGTERM, which ends its agents and then the keeper."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest


def keepers() -> dict[int, str]:
    """Running keepers: pid -> state directory."""
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
            found[int(entry.name)] = args[args.index(b"--state-dir") + 1].decode()
    return found


@pytest.fixture(autouse=True)
def _no_keeper_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    base = str(tmp_path_factory.getbasetemp())
    for pid, state in keepers().items():
        if state.startswith(base) or "/descartes-test-state-" in state:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
