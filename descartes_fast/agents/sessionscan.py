"""Which lines of a chunk of agent JSON events are worth decoding (the compiled twin
``_sessionscan_c`` when it is installed, else ``_sessionscan_py``; same behaviour).

The CLIs write ``{"type":"<name>"`` first on every line, the name 1 to ``TYPE_MAX`` bytes
without ``"`` or ``\\``: :func:`heads` turns a dialect's type names into those line starts, and
:func:`scan` finds, in one pass, the lines that start with a wanted one or contain a marker, or
says that a line starts with no known one (then each line is looked at on its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from descartes_fast import _impl

__all__ = ["TYPE_MAX", "TYPE_FIRST", "heads", "scan"]

#: the longest event type a line can start with
TYPE_MAX: Final = 64
#: a line's event type, as the CLIs write it first (group 1: the name)
TYPE_FIRST: Final = re.compile(rb'\{"type":"([^"\\]{1,%d})"' % TYPE_MAX)

_active = _impl.load("sessionscan", _impl.IMPLEMENTATION)

#: ``scan(data, known, wanted, markers) -> [start of each line to decode] | None``: heads from :func:`heads`
scan: Callable[[Any, tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]], list[int] | None] = _active.scan


def heads(names: Iterable[bytes]) -> tuple[bytes, ...]:
    """The line starts ``{"type":"<name>"`` of those *names* a line's type can be (TYPE_FIRST's), sorted."""
    out = (b'{"type":"' + name + b'"' for name in names if b"\n" not in name)
    return tuple(sorted(h for h in out if (got := TYPE_FIRST.match(h)) is not None and got.end() == len(h)))
