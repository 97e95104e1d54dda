"""Output filters (``output_query``'s ``filter``): regular expressions matched in linear time.

The Rust reference filters with the ``regex`` crate, which guarantees time linear in the input;
Python's ``re`` backtracks, so one pattern such as ``(a+)+$`` could take seconds per line.
Filters are compiled with RE2 instead (``google-re2``), the engine the ``regex`` crate's design
follows: the same syntax for what both support, and what needs backtracking (back-references,
look-around) is refused with RE2's reason. A search releases the interpreter lock, so a query
on a worker thread does not hold up the event loop.

Lines are matched a page at a time: the page joined by newlines is searched once per matching
line, with ``^``/``$`` at line boundaries and no match across a newline (RE2's ``never_nl``), so
each line matches exactly when it would alone. (One search call per line costs about 25 times
more: RE2's Python wrapper is the cost, not the matching.) A pattern that names the start or
end of the text itself (``\\A``, ``\\z``) is searched line by line.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any

import re2

__all__ = ["FilterError", "LineFilter", "MAX_FILTER_MEMORY"]

#: the memory one compiled filter may use (RE2's budget for its automata)
MAX_FILTER_MEMORY = 8 << 20


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a bad filter is the client's error, reported to it, not the server's log
    options.max_mem = MAX_FILTER_MEMORY
    options.never_nl = True
    return options


_OPTIONS = _options()


class FilterError(ValueError):
    """A filter RE2 cannot compile; ``str()`` says why."""


class LineFilter:
    """*pattern* (str), compiled; :meth:`matching` finds the lines it matches anywhere in."""

    def __init__(self, pattern: str) -> None:
        raw = pattern.encode("utf-8", "surrogatepass")
        self._alone = _compile(raw)  # (also the check: its error names the pattern as given)
        self._per_line = b"\\A" in raw or b"\\z" in raw
        self._paged = None if self._per_line else _compile(b"(?m)" + raw)

    def matching(self, lines: list[str]) -> list[int]:
        """The indices of the *lines* that match."""
        if not lines:
            return []
        encoded = [line.encode("utf-8", "surrogatepass") for line in lines]
        if self._paged is None:
            search = self._alone.search
            return [i for i, line in enumerate(encoded) if search(line) is not None]
        text = b"\n".join(encoded)
        ends = list(itertools.accumulate(len(line) + 1 for line in encoded))  # past each line's newline
        search = self._paged.search
        out: list[int] = []
        pos = 0
        while pos <= len(text):
            found = search(text, pos)
            if found is None:
                break
            i = bisect.bisect_right(ends, found.start())  # the line the match starts in
            out.append(i)
            pos = ends[i]  # each line counts once: go on from the next one
        return out


def _compile(pattern: bytes) -> Any:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise FilterError(f"{text} (filters are RE2 expressions, matched in linear time: no "
                          f"back-references or look-around)") from None
