"""Where an agent's output is kept: one bounded buffer of lines per stream (no ZeroMQ here)."""

from __future__ import annotations

import collections

__all__ = ["OutputBuffer"]


class OutputBuffer:
    """One stream's output as lines of bytes, oldest dropped (and counted) past *limit* bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: collections.deque[bytes] = collections.deque()
        self.first = 0          # absolute index of lines[0]
        self.size = 0           # bytes held in lines
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self.total_bytes = 0    # everything ever received
        self.cursor = 0         # next line for read_next()
        self._partial = bytearray()

    def append(self, data: bytes) -> None:
        self.total_bytes += len(data)
        self._partial += data
        start = 0
        while True:
            end = self._partial.find(b"\n", start)
            if end < 0:
                break
            self._keep(bytes(self._partial[start:end + 1]))
            start = end + 1
        del self._partial[:start]
        if len(self._partial) >= self.limit:  # one line longer than the whole budget
            self._keep(bytes(self._partial))
            self._partial.clear()

    def close(self) -> None:
        """End of stream: an unterminated last line becomes a line."""
        if self._partial:
            self._keep(bytes(self._partial))
            self._partial.clear()

    def _keep(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)
        while self.size > self.limit and len(self.lines) > 1:
            old = self.lines.popleft()
            self.first += 1
            self.size -= len(old)
            self.dropped_lines += 1
            self.dropped_bytes += len(old)

    @property
    def total_lines(self) -> int:
        """Lines seen so far, dropped ones included."""
        return self.first + len(self.lines)

    def read_next(self) -> bytes | None:
        """The next unread line (the reference's destructive ``read_stdout``), or None."""
        self.cursor = max(self.cursor, self.first)
        if self.cursor >= self.total_lines:
            return None
        line = self.lines[self.cursor - self.first]
        self.cursor += 1
        return line

    def text_lines(self) -> list[str]:
        """Retained lines as text (invalid UTF-8 replaced), without their line ends."""
        return [line.decode("utf-8", "replace").rstrip("\r\n") for line in self.lines]
