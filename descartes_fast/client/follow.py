"""Following an agent's output: what the server stored, then what it publishes live, every chunk
exactly once and in order (the Clone pattern of the ZeroMQ guide, chapter 5).

Subscribe first; then read the stored chunks (``output_read``) from the starting point until
caught up; then take the live chunks, skipping those already read (each carries its stream's
``sequence``, the chunk's number in the server's store). A live chunk whose number is past the
next one expected means some were lost on the way (a full queue, a subscription that was late):
they are read from the store before going on. The follow ends once the server says the agent
has ended and every chunk up to its end has been given. A server that stops answering (a crash,
an upgrade) is asked again until it is back, for up to *resume_secs*: the follow then goes on
from its next chunk, which the restarted server still stores.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from descartes_fast.client.errors import RequestTimeoutError
from descartes_fast.client.subscriptions import Subscription
from descartes_fast.wire.schema import LogStreamMessage, LogStreamType, OutputReadResponse, StatusUpdate

__all__ = ["Start", "Replay"]

#: bytes asked for per read of stored output (measured on 53 MB of `descartes-fast logs`, medians of
#: 5 runs, interleaved: 512 KiB 148-150 MB/s, 1 MiB 162-165, 2 MiB 175-187; chunks are <= 128 KiB,
#: so a page is many chunks and holds about what is asked)
PAGE = 2 << 20


class ReadOutput(Protocol):
    """``AsyncClient.read_output``: one ``output_read`` request."""

    def __call__(self, agent_id: Any, stream: LogStreamType, *, offset: int | None = None,
                 sequence: int | None = None, line: int | None = None,
                 max_bytes: int | None = None) -> Awaitable[OutputReadResponse]: ...


@dataclass(frozen=True)
class Start:
    """Where a follow starts in each stream: the first stored byte (the default), a line, a
    chunk sequence number, or now (only what comes next)."""

    line: int | None = None
    sequence: int | None = None
    now: bool = False


@dataclass
class _Cursor:
    """One stream of the follow: the next chunk to give, and stored chunks read but not yet given."""

    stream: LogStreamType
    next_sequence: int = 0
    caught_up: bool = False  # every chunk stored when last asked has been read
    ended: bool = False      # the agent has ended and every chunk up to its end was read
    pending: collections.deque[LogStreamMessage] = field(default_factory=collections.deque)
    ahead: tuple[int, asyncio.Future[OutputReadResponse]] | None = None  # the next read, already asked


class Replay:
    """An async iterator of the agent's :class:`LogStreamMessage` chunks; see the module docstring.

    *read_output* is ``AsyncClient.read_output``. Without *logs* (a subscription to the live chunks)
    it gives only what is stored now and ends (``descartes-fast logs``).
    *dropped* counts the chunks the server had already dropped (its retention budget) at the
    starting point, per stream; *resumed* the reads that went unanswered and were asked again.
    """

    def __init__(self, read_output: ReadOutput, agent_id: Any, streams: tuple[LogStreamType, ...], start: Start,
                 logs: Subscription[LogStreamMessage] | None, events: Subscription[StatusUpdate] | None,
                 poll_interval: float, resume_secs: float = 0.0) -> None:
        self.read_output, self.agent_id = read_output, agent_id
        self.resume_secs = resume_secs
        self.resumed = 0
        self.logs, self.events = logs, events
        self.start = start
        self.poll_interval = poll_interval
        self.cursors = {s: _Cursor(s) for s in streams}
        self.dropped = dict.fromkeys(streams, 0)
        self._primed = False
        self._next_event: asyncio.Future[StatusUpdate] | None = None

    def __aiter__(self) -> Replay:
        return self

    async def __anext__(self) -> LogStreamMessage:
        if not self._primed:
            await self._prime()
        while True:
            # a stream with nothing queued that may have more stored holds the others back: its next
            # chunk may be earlier than theirs (the streams come out in the order they were written)
            blocking = [c for c in self.cursors.values() if not c.pending and not c.caught_up and not c.ended]
            if blocking:
                await self._read(blocking[0])
                continue
            chunk = self._next_pending()
            if chunk is not None:
                return chunk
            if all(c.ended for c in self.cursors.values()) or self.logs is None:
                await self.aclose()
                raise StopAsyncIteration
            await self._wait_live()

    async def batch(self) -> list[LogStreamMessage]:
        """The next chunk and every chunk after it that can be given without waiting (at least one;
        StopAsyncIteration at the end). For callers on another thread: one hop for many chunks."""
        out = [await self.__anext__()]
        while not any(not c.pending and not c.caught_up and not c.ended for c in self.cursors.values()):
            chunk = self._next_pending()
            if chunk is None:
                break
            out.append(chunk)
        return out

    # -- the stored part --

    async def _prime(self) -> None:
        """Find each stream's starting chunk."""
        self._primed = True
        for cursor in self.cursors.values():
            if self.start.now:
                reply = await self._call(cursor.stream, sequence=1 << 62, max_bytes=1)
                cursor.next_sequence, cursor.caught_up = reply.end_sequence, True
                cursor.ended = reply.ended
            elif self.start.line is not None:
                reply = await self._call(cursor.stream, line=self.start.line, max_bytes=PAGE)
                self.dropped[cursor.stream] = reply.first_sequence
                cursor.next_sequence = reply.sequence
                self._take(cursor, reply)
            else:
                cursor.next_sequence = self.start.sequence or 0

    async def _read(self, cursor: _Cursor) -> None:
        """Read a page of stored chunks of *cursor* (which has none queued), from its next one. While
        more is stored, the page after it is asked for at once: the server reads it while this one
        is given out (one request at a time would leave both sides waiting half the time)."""
        ahead, cursor.ahead = cursor.ahead, None
        if ahead is not None and ahead[0] == cursor.next_sequence:
            reply = await ahead[1]
        else:
            if ahead is not None:
                ahead[1].cancel()
            reply = await self._ask(cursor, cursor.next_sequence)
        if reply.sequence > cursor.next_sequence:  # gone before we got there: the budget dropped them
            self.dropped[cursor.stream] += reply.sequence - cursor.next_sequence
            cursor.next_sequence = reply.sequence
        self._take(cursor, reply)
        if not cursor.caught_up:
            after = reply.sequence + len(reply.chunk_ends)
            ahead_read = asyncio.ensure_future(self._ask(cursor, after))
            # a read ahead that nobody takes (the reader stopped, the client disconnected) fails quietly
            ahead_read.add_done_callback(lambda f: f.cancelled() or f.exception())
            cursor.ahead = (after, ahead_read)

    async def _ask(self, cursor: _Cursor, sequence: int) -> OutputReadResponse:
        return await self._call(cursor.stream, sequence=sequence, max_bytes=PAGE)

    async def _call(self, stream: LogStreamType, **where: Any) -> OutputReadResponse:
        """One read, asked again while the server does not answer (for up to ``resume_secs``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resume_secs
        while True:
            try:
                return await self.read_output(self.agent_id, stream, **where)
            except RequestTimeoutError as exc:
                if loop.time() >= deadline:
                    raise RequestTimeoutError(f"{exc}; the server did not answer again within "
                                              f"{self.resume_secs:g} s (follow_resume_secs)") from None
                self.resumed += 1
                await asyncio.sleep(min(0.2, self.resume_secs))

    def _take(self, cursor: _Cursor, reply: OutputReadResponse) -> None:
        """Queue the chunks of a read; note whether the stream is caught up, or over."""
        data, start, seq = reply.data, reply.offset, reply.sequence
        at = 0
        for end, when in zip(reply.chunk_ends, reply.chunk_times):
            piece = data[at:end - start]
            at = end - start
            if seq >= cursor.next_sequence + len(cursor.pending):
                cursor.pending.append(LogStreamMessage(self.agent_id, cursor.stream, piece, when, seq))
            seq += 1
        end_of_reads = reply.sequence + len(reply.chunk_ends)
        cursor.caught_up = end_of_reads >= reply.end_sequence
        if reply.ended and cursor.caught_up:
            cursor.ended = True

    def _next_pending(self) -> LogStreamMessage | None:
        """The earliest queued chunk of any stream."""
        heads = [(c.pending[0].timestamp, c.stream.value, c) for c in self.cursors.values() if c.pending]
        if not heads:
            return None
        cursor = heapq.nsmallest(1, heads)[0][2]
        chunk = cursor.pending.popleft()
        cursor.next_sequence = chunk.sequence + 1
        return chunk

    # -- the live part --

    async def _wait_live(self) -> None:
        """Wait for a live chunk, a status update, or a quiet interval; act on what came."""
        assert self.logs is not None
        if not self.logs.queue.empty():
            self._live(self.logs.queue.get_nowait())
            return
        if self.events is not None and self._next_event is None:
            self._next_event = asyncio.ensure_future(self.events.__anext__())
        next_log = asyncio.ensure_future(self.logs.queue.get())
        waiting: set[asyncio.Future[Any]] = {next_log}
        if self._next_event is not None:
            waiting.add(self._next_event)
        done, _ = await asyncio.wait(waiting, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
        if next_log in done:
            self._live(next_log.result())
            return
        next_log.cancel()
        if self._next_event is not None and self._next_event in done:
            update = self._next_event.result()
            self._next_event = None
            if update.status is None or not update.status.is_terminal():
                return
        for cursor in self.cursors.values():  # the agent ended, or all was quiet: ask the store
            if not cursor.ended:
                cursor.caught_up = False

    def _live(self, chunk: LogStreamMessage | None) -> None:
        if chunk is None:  # the subscription was closed (the client disconnected)
            for each in self.cursors.values():
                each.ended = True
            return
        cursor = self.cursors.get(chunk.stream_type)
        if cursor is None:
            return  # not a stream we follow
        expected = cursor.next_sequence + len(cursor.pending)
        if chunk.sequence == expected:
            cursor.pending.append(chunk)
        elif chunk.sequence > expected:
            cursor.caught_up = False  # some were missed: read them from the store first
        # (below: already read)

    async def aclose(self) -> None:
        for cursor in self.cursors.values():
            if cursor.ahead is not None:
                cursor.ahead[1].cancel()
                cursor.ahead = None
        if self._next_event is not None:
            self._next_event.cancel()
            self._next_event = None
        for sub in (self.logs, self.events):
            if sub is not None:
                await sub.aclose()
