"""Where lines end in agent output, and where a line, byte or chunk is in the store's index
(the compiled twin ``_lineindex_c`` when it is installed, else ``_lineindex_py``; same behaviour).

Lines end at each ``\\n`` and, in a line longer than ``LINE_MAX``, after every ``LINE_MAX`` bytes
without one: a long line is split, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from descartes_fast import _impl

__all__ = ["LINE_MAX", "RECORD_FIELDS", "scan", "line_ends", "split_lines", "find_record"]

#: the longest line; a longer one is split into lines of this many bytes (and a rest)
LINE_MAX: Final = 65536

_active = _impl.load("lineindex", _impl.IMPLEMENTATION)

RECORD_FIELDS: Final[int] = _active.RECORD_FIELDS
#: ``scan(data, carry, line_max) -> (lines, cut)``
scan: Callable[[Any, int, int], tuple[int, int]] = _active.scan
#: ``line_ends(data, count, line_max) -> [offset after each line end]``
line_ends: Callable[[Any, int, int], list[int]] = _active.line_ends
#: ``split_lines(data, line_max, limit, final) -> [line text]``
split_lines: Callable[[Any, int, int, bool], list[str]] = _active.split_lines
#: ``find_record(records, field, value) -> index of the first record whose field > value``
find_record: Callable[[Any, int, int], int] = _active.find_record
