"""Waiting for a condition instead of sleeping a fixed time (fixed sleeps make flaky tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["until"]


def until(check: Callable[[], Any], timeout: float = 10.0, seen: Callable[[], Any] = lambda: None) -> None:
    """Wait for *check()* to be true; on timeout the message includes what *seen()* reports."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"condition not reached; seen: {seen()}"
        time.sleep(0.02)
