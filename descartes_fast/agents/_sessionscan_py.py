"""Pure-Python session scan twin: the reference behaviour of the compiled ``_sessionscan_c``.

A chunk of agent output is *lines*: each ends at a ``\\n``, and the bytes after the last ``\\n``
(if any) are the last line (so ``b""`` has none, ``b"\\n"`` one empty line). :func:`scan` finds
the lines worth decoding by their *heads* (the bytes a line starts with) and *markers* (bytes a
line contains), with one regular-expression pass and a ``find`` per marker occurrence.
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = ["scan"]


def _any_of(heads: tuple[bytes, ...]) -> bytes:
    """A pattern matching any of *heads* (none: a pattern that never matches); a head with a
    newline never starts a line."""
    usable = [re.escape(h) for h in heads if b"\n" not in h]
    return b"(?:" + b"|".join(usable) + b")" if usable else b"(?!)"


@functools.lru_cache(maxsize=32)
def _patterns(known: tuple[bytes, ...], wanted: tuple[bytes, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """(at the first line, after a newline): a line that starts with no known head (group 1
    unset), or with a wanted one (group 1 set); other lines do not match. A match ends where
    its line starts."""
    body = rb"(?!\Z)(?:(?!%s)|(?=%s)())" % (_any_of(known), _any_of(wanted))
    return re.compile(body), re.compile(b"\n" + body)


def scan(data: Any, known: tuple[bytes, ...], wanted: tuple[bytes, ...],
         markers: tuple[bytes, ...]) -> list[int] | None:
    """The sorted start offsets of the lines of *data* that start with one of the *wanted* heads
    or contain one of the *markers*; ``None`` when a line starts with none of the *known* heads."""
    raw = data if isinstance(data, bytes) else bytes(data)
    first, after = _patterns(known, wanted)
    starts = set()
    for got in (first.match(raw), *after.finditer(raw)):
        if got is None:
            continue
        if got.lastindex is None:
            return None
        starts.add(got.end())
    n = len(raw)
    for marker in markers:
        if b"\n" in marker:
            continue  # no line contains it
        at = raw.find(marker)
        while 0 <= at < n:
            starts.add(raw.rfind(b"\n", 0, at) + 1)
            end = raw.find(b"\n", at + len(marker))
            if end < 0:
                break
            at = raw.find(marker, end + 1)
    return sorted(starts)
