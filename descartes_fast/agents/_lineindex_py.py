"""Pure-Python line index twin: the reference behaviour of the compiled ``_lineindex_c``.

An agent's output is bytes; its *lines* end at each ``\\n`` and, for a line longer than
``line_max`` bytes, after every ``line_max`` bytes without one (a long line is split, never
dropped). These functions find those ends without a Python object per line, and search the
output store's index records: packed little-endian u64 triples ``(end_offset, end_line,
time_ns)``, one per chunk, in increasing order.
"""

from __future__ import annotations

import bisect
import sys
from typing import Any

__all__ = ["scan", "line_ends", "split_lines", "find_record", "RECORD_FIELDS"]

#: u64 fields per index record: end_offset, end_line, time_ns
RECORD_FIELDS = 3
_NATIVE_LE = sys.byteorder == "little"


def scan(data: Any, carry: int, line_max: int) -> tuple[int, int]:
    """Line ends in *data*, whose first byte follows *carry* bytes of an unfinished line:
    ``(lines, cut)``, where *cut* is the offset in *data* just after the last line end (0 when
    *data* ends none; the bytes from *cut* on are the new unfinished line)."""
    view = memoryview(data).cast("B")
    n = len(view)
    raw = view.obj if isinstance(view.obj, bytes) else bytes(view)
    lines = 0
    cut = 0
    pos = 0                 # where the current line's bytes in data begin
    room = line_max - carry  # bytes the current line may still take before a forced end
    while pos < n:
        window_end = pos + room if pos + room < n else n
        newline = raw.rfind(b"\n", pos, window_end)
        if newline >= 0:
            # every line that ends in [pos, newline] is at most line_max long: only the first one
            # (which carries the unfinished bytes) could have been longer, and it ends in the window
            lines += 1 + raw.count(b"\n", pos, newline)
            pos = cut = newline + 1
            room = line_max
            continue
        if pos + room <= n:  # a line_max run without a newline: a forced end
            lines += 1
            pos = cut = pos + room
            room = line_max
            continue
        break  # the rest is an unfinished line
    return lines, cut


def line_ends(data: Any, count: int, line_max: int) -> list[int]:
    """Offsets in *data* (which starts at a line start) just after each of its first *count* line
    ends; fewer when *data* ends first (an unfinished line at the end has no entry)."""
    view = memoryview(data).cast("B")
    raw = view.obj if isinstance(view.obj, bytes) else bytes(view)
    n = len(raw)
    out: list[int] = []
    pos = 0
    while len(out) < count and pos < n:
        limit = pos + line_max if pos + line_max < n else n
        newline = raw.find(b"\n", pos, limit)
        if newline >= 0:
            pos = newline + 1
        elif pos + line_max <= n:
            pos += line_max
        else:
            break
        out.append(pos)
    return out


def split_lines(data: Any, line_max: int, limit: int, final: bool) -> list[str]:
    """The first *limit* lines of *data* (which starts at a line start) as text, without their
    ``\\n`` (and a ``\\r`` before it), bad UTF-8 replaced. An unfinished last line is included
    when *final* (the output has ended there)."""
    view = memoryview(data).cast("B")
    raw = view.obj if isinstance(view.obj, bytes) else bytes(view)
    ends = line_ends(raw, limit, line_max)
    out = []
    start = 0
    for end in ends:
        stop = end - 1 if raw[end - 1:end] == b"\n" else end
        if stop > start and raw[stop - 1:stop] == b"\r" and stop < end:
            stop -= 1
        out.append(raw[start:stop].decode("utf-8", "replace"))
        start = end
    if final and len(out) < limit and start < len(raw):
        out.append(raw[start:].decode("utf-8", "replace"))
    return out


def find_record(records: Any, field: int, value: int) -> int:
    """Index of the first record whose *field* (0: end_offset, 1: end_line, 2: time) is greater
    than *value*; the number of records when none is. Records are packed little-endian u64
    triples sorted by every field."""
    if not 0 <= field < RECORD_FIELDS:
        raise ValueError(f"field must be 0, 1 or 2, not {field}")
    view = memoryview(records).cast("B")
    if len(view) % (8 * RECORD_FIELDS):
        raise ValueError("index records must be whole u64 triples")
    if _NATIVE_LE:
        column = view.cast("Q")[field::RECORD_FIELDS]
        return bisect.bisect_right(column, value)
    lo, hi = 0, len(view) // (8 * RECORD_FIELDS)  # pragma: no cover - big-endian hosts
    while lo < hi:
        mid = (lo + hi) // 2
        at = (mid * RECORD_FIELDS + field) * 8
        if int.from_bytes(view[at:at + 8], "little") > value:
            hi = mid
        else:
            lo = mid + 1
    return lo
