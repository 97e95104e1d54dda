"""Event subscriptions of a client: status updates and log chunks as async iterators.

The client's SUB socket hands every message to the :class:`Subscription` objects whose topic
prefix it matches (:meth:`Subscription.offer`); each consumer reads its own bounded queue. A
:class:`Follow` reads one agent's log chunks until the agent has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from descartes_fast.wire.schema import LogStreamMessage, Message, StatusUpdate

__all__ = ["Subscription", "Follow"]

_M = TypeVar("_M", bound=Message)
_END: Any = None  # queued to end an iteration


class Subscription(Generic[_M]):
    """One consumer of the PUB messages of type *kind* whose topic starts with *topic*.

    At most *maxsize* messages wait; when full, the oldest queued one makes room (counted in
    ``dropped``). *on_close* is called once when the consumer closes it.
    """

    def __init__(self, topic: bytes, kind: type[_M], maxsize: int,
                 on_close: Callable[[Subscription[_M]], None]) -> None:
        self.topic, self.kind = topic, kind
        self.queue: asyncio.Queue[_M | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._on_close = on_close

    def offer(self, item: _M | None) -> None:
        """Queue *item* (None ends the iteration); when full, the oldest queued item makes room."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)

    def __aiter__(self) -> Subscription[_M]:
        return self

    async def __anext__(self) -> _M:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._on_close(self)
        self.offer(_END)


class Follow:
    """Log chunks of one agent until it has ended: then what is still queued, then the end.

    The end is seen from the agent's terminal status update, or, for servers that publish no
    status updates (a Rust Descartes server), from *has_ended()* asked after *poll_interval*
    seconds without news.
    """

    def __init__(self, logs: Subscription[LogStreamMessage], events: Subscription[StatusUpdate], ended: bool,
                 has_ended: Callable[[], Awaitable[bool]], poll_interval: float) -> None:
        self.logs, self.events, self.ended = logs, events, ended
        self._has_ended = has_ended
        self._poll_interval = poll_interval
        self._next_event: asyncio.Future[StatusUpdate] | None = None

    def __aiter__(self) -> Follow:
        return self

    async def __anext__(self) -> LogStreamMessage:
        while True:
            if not self.logs.queue.empty():
                item = self.logs.queue.get_nowait()
                if item is None:
                    raise StopAsyncIteration
                return item
            if self.ended:
                await self.aclose()
                raise StopAsyncIteration
            if self._next_event is None:
                self._next_event = asyncio.ensure_future(self.events.__anext__())
            next_log = asyncio.ensure_future(self.logs.queue.get())
            waiting: set[asyncio.Future[Any]] = {next_log, self._next_event}
            done, _ = await asyncio.wait(waiting, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED)
            if next_log in done:
                item = next_log.result()
                if item is None:
                    raise StopAsyncIteration
                return item
            next_log.cancel()
            if self._next_event in done:
                update = self._next_event.result()
                self._next_event = None
                if update.status is not None and update.status.is_terminal():
                    await self._end()
            elif await self._has_ended():  # quiet for a while: ask (a server may publish no status updates)
                await self._end()

    async def _end(self) -> None:
        self.ended = True
        await asyncio.sleep(0.05)  # output published just before the end is still in flight

    async def aclose(self) -> None:
        if self._next_event is not None:
            self._next_event.cancel()
        await self.logs.aclose()
        await self.events.aclose()
