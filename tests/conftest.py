"""Every test leaves no keeper behind: a keeper (and so its agents) that a test's state directory
still has when the test ends is sent SIGTERM, which ends its agents and then the keeper."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from support.procs import keepers


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
