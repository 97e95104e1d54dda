"""Agent output on disk: per agent and stream, append-only segments with a chunk index, the
latest bytes in memory, and budgets in bytes (no ZeroMQ here).

Layout of the state directory (``--state-dir``)::

    agents/<agent-id>/stdout.000000.log   the bytes, exactly as the agent wrote them
    agents/<agent-id>/stdout.000000.idx   a header (start offset, line, sequence), then one
                                          record per chunk: (end offset, end line, time ns)
    agents/<agent-id>/stderr.000000.log   ... and so on, segment by segment

Bytes reach the log before this process sees them: the kernel moves each read of a pipe into
the log file (``splice``), which is then read back to be indexed and published, so a crash
loses no byte it read (a reopen indexes what the file holds past its index).

A *chunk* is what one read of the agent's pipe completed: everything up to its last line end
(an unfinished line waits for its end), at most ``CHUNK_MAX`` bytes (a larger read completes
several chunks, so an event on PUB has a size the server can budget for). Chunks are numbered
per stream from 0: the numbers are the ``sequence`` of the log chunks published on PUB, so a
follower can tell what the store holds from what it saw live. Lines end at ``\\n`` and after
every ``LINE_MAX`` bytes without one (:mod:`.lineindex`). Finding a byte, a line or a chunk
costs a binary search in one segment's index (a few reads of 24 bytes), never a scan of the output.

Bounds, all in bytes: each agent keeps at most ``tail_bytes`` of its latest output in memory
(the rest is read from disk), at most ``agent_bytes`` on disk (its oldest segment is dropped
whole, and counted, when it has more), and the directory holds at most ``total_bytes`` (the
oldest finished agents go first, then the oldest segments of the largest live ones).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import struct
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from descartes_fast.agents.lineindex import LINE_MAX, find_record, line_ends, scan, split_lines
from descartes_fast.wire.schema import LogStreamType

__all__ = ["CHUNK_MAX", "Facts", "Chunk", "ReadResult", "StreamLog", "AgentOutput", "OutputStore", "StoreError",
           "WouldBlock"]

#: one index record: a chunk's end offset, end line and time (ns); also a segment's header
RECORD: Final = struct.Struct("<QQQ")
_SEGMENT: Final = re.compile(r"^(stdout|stderr)\.(\d{6})\.log$")
_PROBE_WINDOW: Final = 128  # records read at once at the end of a binary search
_RECORD_WINDOW: Final = 1024  # records read at once for a read's chunks
MAX_READ_CHUNKS: Final = 16384  # chunks described in one read (their ends and times travel along)
_READ_AHEAD: Final = 4 << 20  # bytes the kernel is asked to bring in after each read from a file
#: the most bytes in one chunk: an unfinished line (under LINE_MAX) and the piece of a read it ends in
CHUNK_MAX: Final = 2 * LINE_MAX
#: how long reads that follow each other closely are held (in the log, not indexed yet) to become
#: one chunk, at most (see StreamLog.take): the latency a busy stream's chunks have at worst
HOLD_SECS: Final = 0.005
_HOLD_NS: Final = int(HOLD_SECS * 1e9)


class StoreError(Exception):
    """The output store cannot do what was asked (the text says why)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What a stream holds: ``first_*`` is still stored (what came before was dropped), ``end_*``
    was ever written in whole chunks, ``ended``: the agent has ended."""

    first_offset: int
    first_line: int
    first_sequence: int
    end_offset: int
    end_line: int
    end_sequence: int
    ended: bool

    def as_dict(self) -> dict[str, int | bool]:
        """The facts as a reply's data carries them (docs/protocol.md §6.20)."""
        return {"first_offset": self.first_offset, "first_line": self.first_line,
                "first_sequence": self.first_sequence, "total_bytes": self.end_offset,
                "total_lines": self.end_line, "next_sequence": self.end_sequence,
                "dropped_bytes": self.first_offset, "dropped_lines": self.first_line,
                "dropped_chunks": self.first_sequence, "ended": self.ended}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk just appended: its sequence number and its bytes (to publish)."""

    sequence: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Bytes read from the store: *data* starts at *offset* (line *line*), in chunk *sequence*;
    the chunks it covers end at *chunk_ends* and were written at *chunk_times*."""

    data: bytes
    offset: int
    line: int
    sequence: int
    chunk_ends: list[int]
    chunk_times: list[int]
    facts: Facts


class _Files:
    """A segment's log and index open for reading, closed when nothing refers to them any more (a
    read on a worker thread keeps them open while the segment is dropped meanwhile)."""

    __slots__ = ("idx", "log")

    def __init__(self, log_path: Path, idx_path: Path) -> None:
        self.log = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.idx = os.open(idx_path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self.log)
            raise

    def __del__(self) -> None:
        os.close(self.log)
        os.close(self.idx)


@dataclass(slots=True)
class _Segment:
    number: int
    start_offset: int
    start_line: int
    start_sequence: int
    end_offset: int    # after its last chunk
    end_line: int
    end_sequence: int
    written: int       # bytes in its log file (its chunks, and then an unfinished line)
    files: _Files | None = None  # open for reading, once read

    @property
    def size(self) -> int:
        """Bytes on disk: the log and the index (a header and a record per chunk)."""
        return self.written + RECORD.size * (1 + self.end_sequence - self.start_sequence)


class _Ring:
    """The latest bytes of a stream (at most *capacity*), addressed by absolute offset."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = bytearray()
        self._head = 0  # once full: where the oldest byte is (and the next write goes)
        self.end = 0    # the absolute offset after the newest byte
        self.lock = threading.Lock()  # reads may come from a worker thread

    @property
    def start(self) -> int:
        return self.end - len(self._buf)

    def append(self, data: bytes | memoryview) -> None:
        with self.lock:
            self._append(data)

    def _append(self, data: bytes | memoryview) -> None:
        data = memoryview(data)  # slices below copy nothing
        n = len(data)
        buf, cap = self._buf, self.capacity
        self.end += n
        if len(buf) < cap:  # still filling
            room = cap - len(buf)
            buf += data[:room]
            data = data[room:]
            n = len(data)
            if not n:
                return
        if n >= cap:
            buf[:] = data[n - cap:]
            self._head = 0
            return
        head = self._head
        first = min(n, cap - head)
        buf[head:head + first] = data[:first]
        if first < n:
            buf[:n - first] = data[first:]
        self._head = (head + n) % cap

    def get(self, offset: int, n: int) -> bytes | None:
        """Bytes [offset, offset + n) if they are still held, else None (any thread)."""
        with self.lock:
            if self.start <= offset and offset + n <= self.end:
                return self.read(offset, n)
        return None

    def read(self, offset: int, n: int) -> bytes:
        """Bytes [offset, offset + n), which must be held (the writer's own thread)."""
        buf = self._buf
        at = (self._head + offset - self.start) % len(buf) if buf else 0
        if at + n <= len(buf):
            return bytes(buf[at:at + n])
        return bytes(buf[at:]) + bytes(buf[:n - (len(buf) - at)])


class WouldBlock(Exception):
    """A read asked not to wait found its bytes not in the page cache (read it on a worker thread)."""


_NOWAIT: Final = getattr(os, "RWF_NOWAIT", None)


def _pread_exact(fd: int, n: int, offset: int, nowait: bool = False) -> bytes:
    """*n* bytes at *offset*; with *nowait*, only from the page cache (else WouldBlock)."""
    if nowait:
        if _NOWAIT is None:
            raise WouldBlock
        buf = bytearray(n)
        try:
            got = os.preadv(fd, [buf], offset, _NOWAIT)
        except BlockingIOError:
            raise WouldBlock from None
        except OSError as exc:  # a file system that cannot read so (tmpfs on this kernel: EOPNOTSUPP)
            if exc.errno != errno.EOPNOTSUPP:
                raise
            raise WouldBlock from None
        if got != n:
            raise WouldBlock
        return bytes(buf)
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise StoreError(f"short read: {len(data)} of {n} bytes at {offset}")
    return data


def _pending(fd: int) -> int:
    """Bytes the pipe *fd* holds now."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _columns(raw: bytes | memoryview) -> tuple[list[int], list[int]]:
    """The end offsets and times of packed index records."""
    if sys.byteorder == "little":
        fields = memoryview(raw).cast("Q")
        return fields[0::3].tolist(), fields[2::3].tolist()
    records = list(RECORD.iter_unpack(bytes(raw)))  # pragma: no cover - big-endian hosts
    return [r[0] for r in records], [r[2] for r in records]


class StreamLog:
    """One stream of one agent: append (on the event loop) and read (from any thread)."""

    def __init__(self, directory: Path, name: str, *, tail_bytes: int, segment_bytes: int,
                 on_size: Callable[[int], None], line_max: int = LINE_MAX, chunk_max: int = CHUNK_MAX) -> None:
        if chunk_max <= line_max:
            raise ValueError(f"chunk_max ({chunk_max}) must be more than line_max ({line_max})")
        self.directory = directory
        self.name = name
        self.segment_bytes = segment_bytes
        self.line_max = line_max
        self._piece = chunk_max - line_max  # bytes of a read taken at once: a chunk stays <= chunk_max
        self._on_size = on_size  # told every change of the bytes on disk (a delta)
        self._ring = _Ring(max(tail_bytes, 2 * line_max))
        self._segments: list[_Segment] = []
        self._log_fd: int | None = None
        self._idx_fd: int | None = None
        self.carry = 0       # bytes of the unfinished line (written, in no chunk yet)
        self._unindexed = 0  # bytes in the log after the unfinished line, of a read being indexed
        self._held = 0  # bytes in the log after the unfinished line that take() holds back (not indexed yet)
        self._released_ns = -_HOLD_NS  # when take() (or release) last indexed what it held
        self._splice = hasattr(os, "splice")  # until a descriptor says it is no pipe
        self.ended = False
        self.dropped_segments = 0

    # -- files --

    def _path(self, number: int, suffix: str) -> Path:
        return self.directory / f"{self.name}.{number:06d}.{suffix}"

    def _open_segment(self, number: int, offset: int, line: int, sequence: int) -> _Segment:
        if not self._segments:  # the agent's directory is made with its first byte (most spawns have none)
            self.directory.mkdir(mode=0o700, exist_ok=True)
        # the log is written at explicit offsets (splice cannot write to an O_APPEND file) and read back
        new = os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC  # (a crash may have left a file of this number behind)
        self._log_fd = os.open(self._path(number, "log"), os.O_RDWR | new, 0o600)
        self._idx_fd = os.open(self._path(number, "idx"), os.O_WRONLY | os.O_APPEND | new, 0o600)
        os.write(self._idx_fd, RECORD.pack(offset, line, sequence))
        seg = _Segment(number, offset, line, sequence, offset, line, sequence, 0)
        self._segments.append(seg)
        self._on_size(RECORD.size)
        return seg

    def _resume(self) -> _Segment:
        """Append to the last segment again (after a reopen)."""
        seg = self._segments[-1]
        self._log_fd = os.open(self._path(seg.number, "log"), os.O_RDWR | os.O_CLOEXEC)
        self._idx_fd = os.open(self._path(seg.number, "idx"), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return seg

    def _close_writer(self) -> None:
        for fd in (self._log_fd, self._idx_fd):
            if fd is not None:
                os.close(fd)
        self._log_fd = self._idx_fd = None

    def close_files(self) -> None:
        """Close what is open for writing, and let go of what is open for reading."""
        self._close_writer()
        for seg in self._segments:
            seg.files = None

    def _write(self, seg: _Segment, data: bytes | memoryview) -> None:
        assert self._log_fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self._log_fd, view, seg.written)
            seg.written += n
            view = view[n:]
        self._on_size(len(data))

    def _writer(self) -> _Segment:
        """The segment being written, its files open (at the first write, and the first after a reopen)."""
        if self._log_fd is None:
            return self._resume() if self._segments else self._open_segment(0, 0, 0, 0)
        return self._segments[-1]

    # -- writing (on the event loop) --

    def take(self, fd: int, most: int, now_ns: int, hold: bool = False) -> tuple[int, list[Chunk]]:
        """Move at most *most* bytes of the pipe *fd* into the log; how many (0 at its end) and the
        chunks they complete. From a pipe the kernel moves them (``splice``), so a crash of this
        process after the read loses nothing: the bytes are in the file before they are in this
        process. From what is no pipe (a terminal's master) they are read, then written; a
        failed read is the end (0). Raises :class:`BlockingIOError` when *fd* has nothing now, and
        what writing the log raised.

        With *hold*, bytes from a pipe that come within ``HOLD_SECS`` of the last chunks are held
        back (stored, not indexed) until a chunk's worth is there or a read comes later than that:
        a busy stream makes few big chunks, not one per read; the first read after a quiet spell
        is indexed at once. Whoever holds must call :meth:`release` within ``HOLD_SECS`` when
        :attr:`held` is left non-zero. A reopen indexes what a crash left held."""
        if self._splice and (self._log_fd is not None or _pending(fd)):  # (no file before the first byte)
            seg = self._writer()
            assert self._log_fd is not None
            try:
                n = os.splice(fd, self._log_fd, most, offset_dst=seg.written)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._splice = False  # not a pipe
            else:
                if not n:
                    return 0, []
                seg.written += n
                self._on_size(n)
                self._held += n
                if hold and self._held < self._piece and now_ns - self._released_ns < _HOLD_NS:
                    return n, []
                return n, self.release(now_ns)
        try:
            data = os.read(fd, most)
        except BlockingIOError:
            raise
        except OSError:  # the end of what *fd* gives (a terminal's master once its last user has gone: EIO)
            return 0, []
        return len(data), self.append(data, now_ns)

    @property
    def held(self) -> int:
        """Bytes stored but held back from indexing by :meth:`take`."""
        return self._held

    def release(self, now_ns: int) -> list[Chunk]:
        """Index what :meth:`take` holds: the chunks it completes."""
        if not self._held or self._log_fd is None:
            return []
        seg = self._segments[-1]
        held, self._held = self._held, 0
        self._released_ns = now_ns
        return self._pieces(_pread_exact(self._log_fd, held, seg.written - held), now_ns, stored=True)

    def append(self, data: bytes, now_ns: int) -> list[Chunk]:
        """Store *data* as read from the pipe; the chunks it completes (none until a line ends)."""
        return self.release(now_ns) + self._pieces(data, now_ns, stored=False)

    def _pieces(self, data: bytes, now_ns: int, stored: bool) -> list[Chunk]:
        if len(data) <= self._piece:
            chunk = self._append(data, now_ns, stored)
            return [] if chunk is None else [chunk]
        chunks = []
        for start in range(0, len(data), self._piece):
            piece = data[start:start + self._piece]
            if stored:  # in the file already, after this piece: a roll moves them along
                self._unindexed = max(0, len(data) - start - self._piece)
            chunk = self._append(piece, now_ns, stored)
            if chunk is not None:
                chunks.append(chunk)
        self._unindexed = 0
        return chunks

    def _append(self, data: bytes, now_ns: int, stored: bool = False) -> Chunk | None:
        """Index *data* (and write it, unless it is *stored* already)."""
        if not data:
            return None
        seg = self._segments[-1] if stored else self._writer()
        if not stored:
            self._write(seg, data)
        lines, cut = scan(data, self.carry, self.line_max)
        # the unfinished line so far is the newest bytes of the ring: take it before they are overwritten
        carried = self._ring.read(seg.end_offset, self.carry) if lines and self.carry else b""
        self._ring.append(data)
        if not lines:
            self.carry += len(data)
            return None
        self.carry = len(data) - cut
        return self._record(carried + data[:cut] if carried else data[:cut], lines, now_ns)

    def finish(self, now_ns: int) -> list[Chunk]:
        """The agent has ended: what is held, and its unfinished line as a line (the chunks)."""
        self.ended = True
        chunks = self.release(now_ns)
        last = self.cut(now_ns)
        return chunks if last is None else chunks + [last]

    def cut(self, now_ns: int) -> Chunk | None:
        """The unfinished line becomes a line now (the chunk, if any): what a terminal shows
        without a newline (a prompt) is not held back. Nothing may be held (see :meth:`take`)."""
        if self._held:
            raise StoreError("cut() with bytes held: release() them first")
        if not self.carry:
            return None
        seg = self._segments[-1]
        chunk = self._ring.read(seg.end_offset, self.carry)
        self.carry = 0
        return self._record(chunk, 1, now_ns)

    def _record(self, chunk: bytes, lines: int, now_ns: int) -> Chunk:
        seg = self._segments[-1]
        assert self._idx_fd is not None
        sequence = seg.end_sequence
        seg.end_offset += len(chunk)
        seg.end_line += lines
        seg.end_sequence += 1
        os.write(self._idx_fd, RECORD.pack(seg.end_offset, seg.end_line, now_ns))
        self._on_size(RECORD.size)
        if seg.size >= self.segment_bytes:
            self._roll(seg)
        return Chunk(sequence, chunk)

    def _roll(self, seg: _Segment) -> None:
        """Start the next segment (a segment holds whole chunks): the bytes after its last chunk
        (the unfinished line, and the rest of a read being indexed) move into it. They are written
        there first and cut from here after, so a crash in between leaves them twice, never
        nowhere (a reopen cuts the first copy: :meth:`_settle_roll`)."""
        assert self._log_fd is not None and self._idx_fd is not None
        moved = self.carry + self._unindexed
        kept = seg.end_offset - seg.start_offset
        tail = _pread_exact(self._log_fd, moved, kept) if moved else b""
        log_fd = self._log_fd
        os.close(self._idx_fd)
        self._log_fd = self._idx_fd = None
        try:
            nxt = self._open_segment(seg.number + 1, seg.end_offset, seg.end_line, seg.end_sequence)
            if tail:
                self._write(nxt, tail)
                os.ftruncate(log_fd, kept)
                seg.written = kept
                self._on_size(-moved)
        finally:
            os.close(log_fd)

    def drop_oldest(self) -> int:
        """Drop the oldest segment whole (never the one being written); the bytes it freed."""
        if len(self._segments) < 2:
            return 0
        seg = self._segments.pop(0)
        for suffix in ("log", "idx"):
            try:
                self._path(seg.number, suffix).unlink()
            except FileNotFoundError:
                pass
        self.dropped_segments += 1
        self._on_size(-seg.size)
        return seg.size

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def oldest_time(self) -> int:
        """The segment number of the oldest segment (a proxy for age within one agent)."""
        return self._segments[0].number if self._segments else 0

    # -- reading (any thread; everything it needs is snapshotted first) --

    def facts(self) -> Facts:
        if not self._segments:
            return Facts(0, 0, 0, 0, 0, 0, self.ended)
        first, last = self._segments[0], self._segments[-1]
        return Facts(first.start_offset, first.start_line, first.start_sequence, last.end_offset, last.end_line,
                     last.end_sequence, self.ended)

    def snapshot(self) -> tuple[list[_Segment], Facts]:
        """The segments and facts as they are now, for a read that may run on another thread."""
        return [replace(s) for s in self._segments], self.facts()

    def read(self, *, offset: int | None = None, sequence: int | None = None, line: int | None = None,
             max_bytes: int = 1 << 20, max_chunks: int = MAX_READ_CHUNKS,
             snapshot: tuple[list[_Segment], Facts] | None = None, nowait: bool = False) -> ReadResult:
        """Whole chunks from *offset*, *sequence* or *line* (the first given; none: from the first
        byte stored), at most *max_bytes* (but at least one chunk) and *max_chunks*, within one
        segment. A point before what is stored starts at the first byte stored. With *nowait*
        everything must come from memory or the page cache (else WouldBlock: ask again on a
        worker thread); a read that needs the disk then never holds the event loop."""
        segments, facts = snapshot or self.snapshot()
        empty = ReadResult(b"", facts.end_offset, facts.end_line, facts.end_sequence, [], [], facts)
        if not segments:
            return empty
        if offset is not None:
            key, value = 0, max(offset, facts.first_offset)
            if value >= facts.end_offset:
                return empty
        elif sequence is not None:
            key, value = -1, max(sequence, facts.first_sequence)
            if value >= facts.end_sequence:
                return empty
        elif line is not None:
            key, value = 1, max(line, facts.first_line)
            if value >= facts.end_line:
                return empty
        else:
            key, value = 0, facts.first_offset
            if value >= facts.end_offset:
                return empty
        seg = self._segment_for(segments, key, value)
        files = self._files(seg)
        count = seg.end_sequence - seg.start_sequence
        r = value - seg.start_sequence if key < 0 else self._search(files.idx, count, key, value, nowait)
        # record r - 1 (the header when r is 0: the segment's start) ends where chunk r starts; the
        # records after it are read a window at a time, and those ending within max_bytes are taken
        available = min(count - r, max_chunks)
        window = min(available, _RECORD_WINDOW)
        raw = _pread_exact(files.idx, RECORD.size * (window + 1), RECORD.size * r, nowait)
        chunk_start, chunk_line = RECORD.unpack_from(raw, 0)[:2]
        records = memoryview(raw)[RECORD.size:]
        take = find_record(records, 0, chunk_start + max_bytes)
        ends, times = _columns(records[:RECORD.size * max(1, take)])
        while take == window and len(ends) < available:  # all of them fit: there may be room for more
            window = min(available - len(ends), _RECORD_WINDOW)
            raw = _pread_exact(files.idx, RECORD.size * window, RECORD.size * (r + 1 + len(ends)), nowait)
            take = find_record(raw, 0, chunk_start + max_bytes)
            more_ends, more_times = _columns(memoryview(raw)[:RECORD.size * take])
            ends += more_ends
            times += more_times
        start_offset, start_line = chunk_start, chunk_line
        data = self._bytes(seg, files, chunk_start, ends[-1] - chunk_start, nowait)
        if key == 0 and value > chunk_start:  # from a byte inside the first chunk
            cut = value - chunk_start
            start_line = chunk_line + (scan(data[:cut], 0, self.line_max)[0] if cut else 0)
            data, start_offset = data[cut:], value
        elif key == 1 and value > chunk_line:  # from a line inside the first chunk
            cut = line_ends(data, value - chunk_line, self.line_max)[-1]
            data, start_offset, start_line = data[cut:], chunk_start + cut, value
        return ReadResult(data, start_offset, start_line, seg.start_sequence + r, ends, times, facts)

    @staticmethod
    def _segment_for(segments: list[_Segment], key: int, value: int) -> _Segment:
        for seg in segments:
            end = seg.end_sequence if key < 0 else seg.end_offset if key == 0 else seg.end_line
            if value < end:
                return seg
        return segments[-1]

    @staticmethod
    def _search(idx: int, count: int, field: int, value: int, nowait: bool = False) -> int:
        """The first record (of *count*, after the header) whose *field* exceeds *value*."""
        lo, hi = 0, count
        while hi - lo > _PROBE_WINDOW:
            mid = (lo + hi) // 2
            if RECORD.unpack(_pread_exact(idx, RECORD.size, RECORD.size * (mid + 1), nowait))[field] > value:
                hi = mid + 1  # mid may be the answer
            else:
                lo = mid + 1
        window = _pread_exact(idx, RECORD.size * (hi - lo), RECORD.size * (lo + 1), nowait)
        return lo + find_record(window, field, value)

    def _files(self, seg: _Segment) -> _Files:
        """The segment's files open for reading (opened at its first read, kept while it is stored)."""
        files = seg.files
        if files is None:
            files = _Files(self._path(seg.number, "log"), self._path(seg.number, "idx"))
            for live in self._segments:  # the segment itself, not only the snapshot's copy of it
                if live.number == seg.number:
                    live.files = files
            seg.files = files
        return files

    def _bytes(self, seg: _Segment, files: _Files, offset: int, n: int, nowait: bool = False) -> bytes:
        held = self._ring.get(offset, n)
        if held is not None:
            return held
        at = offset - seg.start_offset
        data = _pread_exact(files.log, n, at, nowait)
        # a reader goes on from here: have the kernel fetch what comes next meanwhile
        os.posix_fadvise(files.log, at + n, _READ_AHEAD, os.POSIX_FADV_WILLNEED)
        return data

    def lines(self, first: int, limit: int, snapshot: tuple[list[_Segment], Facts] | None = None) -> list[str]:
        """Up to *limit* lines as text from line *first* (absolute), line ends removed."""
        segments, facts = snapshot or self.snapshot()
        out: list[str] = []
        line = first
        while len(out) < limit and line < facts.end_line:
            want = max(self.line_max, (limit - len(out)) * 128)
            got = self.read(line=line, max_bytes=want, snapshot=(segments, facts))
            if not got.data:
                break
            texts = split_lines(got.data, self.line_max, limit - len(out), True)
            out += texts
            line = got.line + len(texts)
        return out

    # -- reopening after a restart --

    @classmethod
    def reopen(cls, directory: Path, name: str, *, tail_bytes: int, segment_bytes: int, ended: bool,
               on_size: Callable[[int], None], line_max: int = LINE_MAX, chunk_max: int = CHUNK_MAX) -> StreamLog:
        """The stream as stored, repaired where a crash cut it short: index records past the bytes
        are dropped, bytes past the last record become chunks (and an unfinished line a line when
        the agent has ended). The in-memory tail starts empty (reads go to disk)."""
        log = cls(directory, name, tail_bytes=tail_bytes, segment_bytes=segment_bytes, on_size=on_size,
                  line_max=line_max, chunk_max=chunk_max)
        numbers = sorted(int(m.group(2)) for p in (directory.iterdir() if directory.is_dir() else ())
                         if (m := _SEGMENT.match(p.name)) and m.group(1) == name)
        for number in numbers:
            seg = log._load(number)
            if seg is not None:
                log._segments.append(seg)
                on_size(seg.size)
        for seg, nxt in zip(log._segments, log._segments[1:]):
            log._settle_roll(seg, nxt)
        if log._segments:
            log._recover_tail(ended)
        log.ended = ended
        return log

    def _load(self, number: int) -> _Segment | None:
        idx_path, log_path = self._path(number, "idx"), self._path(number, "log")
        try:
            raw = idx_path.read_bytes()
            written = log_path.stat().st_size
        except FileNotFoundError:
            return None
        if len(raw) < RECORD.size:
            return None
        start_offset, start_line, start_sequence = RECORD.unpack_from(raw, 0)
        count = len(raw) // RECORD.size - 1
        while count and RECORD.unpack_from(raw, RECORD.size * count)[0] > start_offset + written:
            count -= 1  # a record of bytes that never reached the log
        if len(raw) != RECORD.size * (count + 1):
            with open(idx_path, "r+b") as f:
                f.truncate(RECORD.size * (count + 1))
        end_offset, end_line = (RECORD.unpack_from(raw, RECORD.size * count)[:2] if count
                                else (start_offset, start_line))
        return _Segment(number, start_offset, start_line, start_sequence, end_offset, end_line,
                        start_sequence + count, written)

    def _settle_roll(self, seg: _Segment, nxt: _Segment) -> None:
        """A crash within a roll left bytes after the last chunk of *seg*: they belong at the start
        of *nxt*. Finish their copy where it was cut short, then cut them from *seg*."""
        kept = seg.end_offset - seg.start_offset
        extra = seg.written - kept
        if extra <= 0:
            return
        with open(self._path(seg.number, "log"), "r+b") as old:
            old.seek(kept)
            tail = old.read(extra)
            if nxt.written < extra:  # (nothing else is in *nxt* then: no chunk came after the roll)
                with open(self._path(nxt.number, "log"), "r+b") as new:
                    new.write(tail)
                self._on_size(extra - nxt.written)
                nxt.written = extra
            old.truncate(kept)
        seg.written = kept
        self._on_size(-extra)

    def _recover_tail(self, ended: bool) -> None:
        """Bytes of the last segment after its last record (a crash came between the two writes)."""
        seg = self._segments[-1]
        fd = os.open(self._path(seg.number, "log"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            done = seg.end_offset - seg.start_offset
            rest = os.pread(fd, seg.written - done, done)
        finally:
            os.close(fd)
        self._ring.end = seg.end_offset  # the ring holds nothing older: reads of it go to the files
        if not rest:
            return
        self._idx_fd = os.open(self._path(seg.number, "idx"), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            now = time.time_ns()
            lines, cut = scan(rest, 0, self.line_max)
            if lines:
                self._record_recovered(seg, len(rest[:cut]), lines, now)
            if cut < len(rest):
                if ended:
                    self._record_recovered(seg, len(rest) - cut, 1, now)
                else:
                    self.carry = len(rest) - cut
            # (the ring starts after the last chunk, also when the rest was whole lines)
            self._ring.end = seg.end_offset
            if self.carry:
                self._ring.append(rest[cut:])  # the unfinished line, for when it is finished
        finally:
            os.close(self._idx_fd)
            self._idx_fd = None

    def _record_recovered(self, seg: _Segment, length: int, lines: int, now: int) -> None:
        assert self._idx_fd is not None
        seg.end_offset += length
        seg.end_line += lines
        seg.end_sequence += 1
        os.write(self._idx_fd, RECORD.pack(seg.end_offset, seg.end_line, now))
        self._on_size(RECORD.size)


class AgentOutput:
    """The two streams of one agent, under one byte budget on disk."""

    def __init__(self, store: OutputStore, agent_id: uuid.UUID, directory: Path,
                 streams: dict[LogStreamType, StreamLog]) -> None:
        self.store = store
        self.agent_id = agent_id
        self.directory = directory
        self.streams = streams

    def __getitem__(self, stream: LogStreamType) -> StreamLog:
        return self.streams[stream]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.streams.values())

    def take(self, stream: LogStreamType, fd: int, most: int, hold: bool = False) -> tuple[int, list[Chunk]]:
        """What the pipe *fd* of *stream* holds, moved into the store (:meth:`StreamLog.take`)."""
        taken, chunks = self.streams[stream].take(fd, most, time.time_ns(), hold)
        if self.size > self.store.agent_bytes:
            self.shrink(self.size - self.store.agent_bytes)
        return taken, chunks

    def finish(self) -> list[tuple[LogStreamType, Chunk]]:
        """The agent has ended: the chunks its unfinished lines became."""
        now = time.time_ns()
        out = []
        for stream, log in self.streams.items():
            out += [(stream, chunk) for chunk in log.finish(now)]
        return out

    def resume(self) -> None:
        """Another process of the same agent writes on (a restart, a session's next turn)."""
        for log in self.streams.values():
            log.ended = False

    def shrink(self, wanted: int) -> int:
        """Drop oldest segments (the stream with more of them first) until *wanted* bytes are freed."""
        freed = 0
        while freed < wanted:
            candidates = [s for s in self.streams.values() if len(s._segments) > 1]
            if not candidates:
                break
            freed += max(candidates, key=lambda s: s.size).drop_oldest()
        return freed

    def close(self) -> None:
        for log in self.streams.values():
            log.close_files()


class OutputStore:
    """Every agent's output under ``<state_dir>/agents``, within the directory's byte budget.

    *evictable* gives the finished agents the store may delete whole to stay within
    *total_bytes*, oldest first; *on_evicted* is told of each one deleted.
    """

    def __init__(self, state_dir: Path, *, tail_bytes: int, agent_bytes: int, total_bytes: int,
                 evictable: Callable[[], list[uuid.UUID]] = list,
                 on_evicted: Callable[[uuid.UUID], None] = lambda agent_id: None) -> None:
        self.root = state_dir / "agents"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tail_bytes = tail_bytes
        self.agent_bytes = agent_bytes
        self.total_bytes = total_bytes
        self.segment_bytes = max(256 * 1024, agent_bytes // 8)
        self.evictable = evictable
        self.on_evicted = on_evicted
        self.size = 0
        self.evicted_agents = 0
        self._live: dict[uuid.UUID, AgentOutput] = {}
        self._sizes: dict[uuid.UUID, int] = {}  # bytes on disk of agents not open now
        self._enforcing = False
        for path in self.root.iterdir():
            try:
                agent_id = uuid.UUID(path.name)
            except ValueError:
                continue
            self._sizes[agent_id] = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        self.size = sum(self._sizes.values())

    def _sized(self, delta: int) -> None:
        self.size += delta
        if delta > 0 and self.size > self.total_bytes and not self._enforcing:
            self._enforce()

    def create(self, agent_id: uuid.UUID) -> AgentOutput:
        directory = self.root / str(agent_id)
        streams = {s: StreamLog(directory, s.value, tail_bytes=self.tail_bytes // 2,
                                segment_bytes=self.segment_bytes, on_size=self._sized) for s in LogStreamType}
        output = self._live[agent_id] = AgentOutput(self, agent_id, directory, streams)
        return output

    def open(self, agent_id: uuid.UUID, ended: bool) -> AgentOutput:
        """The stored output of an agent of an earlier run (empty if it wrote nothing)."""
        if agent_id in self._live:
            return self._live[agent_id]
        directory = self.root / str(agent_id)
        self.size -= self._sizes.pop(agent_id, 0)
        streams = {s: StreamLog.reopen(directory, s.value, tail_bytes=self.tail_bytes // 2,
                                       segment_bytes=self.segment_bytes, ended=ended, on_size=self._sized)
                   for s in LogStreamType}
        output = self._live[agent_id] = AgentOutput(self, agent_id, directory, streams)
        return output

    def release(self, agent_id: uuid.UUID) -> None:
        """Close the files of an agent nothing writes to any more (its output stays on disk)."""
        output = self._live.pop(agent_id, None)
        if output is not None:
            output.close()
            self._sizes[agent_id] = output.size

    def remove(self, agent_id: uuid.UUID) -> None:
        """Delete an agent's output."""
        output = self._live.pop(agent_id, None)
        if output is not None:
            output.close()
            self.size -= output.size
        self.size -= self._sizes.pop(agent_id, 0)
        shutil.rmtree(self.root / str(agent_id), ignore_errors=True)

    def stored(self) -> list[uuid.UUID]:
        return list(self._sizes) + list(self._live)

    def _enforce(self) -> None:
        """Back within total_bytes: finished agents go whole, oldest first; then live agents'
        oldest segments, the largest agent first."""
        self._enforcing = True
        try:
            for agent_id in self.evictable():
                if self.size <= self.total_bytes:
                    return
                self.remove(agent_id)
                self.evicted_agents += 1
                self.on_evicted(agent_id)
            while self.size > self.total_bytes:
                live = sorted(self._live.values(), key=lambda o: o.size, reverse=True)
                if not live or not live[0].shrink(self.size - self.total_bytes):
                    return
        finally:
            self._enforcing = False
